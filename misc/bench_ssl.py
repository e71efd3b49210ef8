"""Science check of the pretraining methods: does self-supervised pretraining on a synthetic set
(its labels unused) give features a linear probe and a kNN classifier can use, better than a
random backbone? Prints one JSON line.

    python misc/bench_ssl.py [--code 1110] [--n 5000] [--pretrain-epochs 20] [--probe-epochs 10] [--width 16]
                             [--methods rotate simclr moco byol vae amdim cmc barlow vicreg simsiam mocov3 dino]
                             [--no-baselines] [-p 'dataloader.batch_size = 64' ...]
    python misc/bench_ssl.py --backbone vit [--depth 12] [--methods mae mocov3 dino]
    python misc/bench_ssl.py --reduced [--backbone vit]     # n 2000, 10 + 5 epochs (ViT: 4 blocks)

For each method: `main.py -l -g syn/r9/<method>` pretrains ResNet-9 on the set (at the batch
size of its config), `misc/move_snapshots.py` moves its checkpoint, and `main.py -l -g
<dataset>/r9/classify` with `Wrapper.pretrained`, `Wrapper.ignore_pretrained_fc` and
`Wrapper.finetune_classifier = False` trains a linear probe (batch 256, lr 0.2) on the frozen features,
in-domain (the same set, with its labels) and transferred to digits. Every probe reports its
validation accuracy (`<source>_probe_<syn|digits>_valid`, 500 held-out training images of the set,
300 of digits): a choice of a method's config (learning rate, batch size, ...) reads these. The
in-domain probe's test accuracy (`<source>_probe_syn_test`, the set's test images) is reported
apart, for the record, and is never the figure a config is chosen by. The baseline `random` probes a randomly initialised backbone (same seed, same
budget), whose BatchNorm layers keep their initial statistics: `Wrapper.calibrate_random = False`,
as a linear probe of a random backbone otherwise measures them on its own training images
(selfstudy.models.calibrate). `calibrated` is the same backbone with the statistics of one pass
over the synthetic set at learning rate 0, taken as a snapshot, as every pretrained backbone has
them (from the synthetic set, also when probed on digits). In-domain, each backbone also gets a
weighted kNN classifier (`knn_grid`, k = 20, T = 0.07, the DINO paper's; the training images
with their labels as its memory): `<source>_knn_syn_valid`, and `_test` for the record.
`--backbone vit` pretrains ViT-Tiny (`syn/vit/<method>`, `--depth` blocks) and probes it with
the same SGD probe; a ViT has no BatchNorm, so its one baseline is `random`, which is already
what `calibrated` would be. CMC's backbone encodes the L channel
of the same images in CIELAB: it has baselines of its own (`random_lab`, `calibrated_lab`), and
its probes are CMCTask's linear probe on the frozen backbone (`Wrapper.finetune_selfsup = False`,
`<dataset>/r9/cmc`), which sees the L view. Also reported: each method's online linear probe
accuracy at the end of pretraining. Everything lives under DATA_DIR/bench_ssl and is removed at
the end; progress goes to stderr.

The seven methods before Barlow Twins (width 16) took about an hour on the 2-core CPU, in two
parts measured (BENCHMARKS.md): rotate, SimCLR, the VAE and AMDIM without the baselines 1,563 s
at commit `4c98266`; MoCo, BYOL and CMC with every baseline 2,311 s at `a818276` (other jobs
shared the cores); the twelve of the default set take longer. `--reduced` with the five newest
methods took 13 minutes (BENCHMARKS.md). `--methods` and `--no-baselines` run a part.

The default code 1110 varies texture, colour and viewpoint. Colour is not tied to the class,
so a random backbone's colour features do not give the class away, and the fixed light,
like the upright viewpoints, tells which way is up.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paths  # noqa: E402

START = time.perf_counter()
METHODS = ("rotate", "simclr", "moco", "byol", "vae", "amdim", "cmc", "barlow", "vicreg", "simsiam", "mocov3", "dino")
VIT_METHODS = ("mae", "mocov3", "dino")
REDUCED = {"n": 2000, "pretrain_epochs": 10, "probe_epochs": 5, "depth": 4}  # --reduced
KNN = ["knn_grid.k = [20]", "knn_grid.temperature = [0.07]"]  # the DINO paper's
SGD_PROBE = ["optimizer.optim_fn = 'SGD'", "optimizer.momentum = 0.9", "optimizer.nesterov = True",
             "optimizer.weight_decay = 5e-4"]  # a ViT's configs train with AdamW: its probes as a ResNet's


def run(script: str, *args: str, env: dict[str, str]) -> None:
    print(f"[{time.perf_counter() - START:6.0f} s] {script} {' '.join(args[:6])}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, str(ROOT / script), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def record(figures: dict[str, object], key: str, value: float) -> None:
    figures[key] = round(value, 4)
    print(f"{key} = {figures[key]}", file=sys.stderr, flush=True)


def final(exp_dir: Path, name: str) -> dict:
    return json.loads(next((exp_dir / name).glob("*/result.json")).read_text().splitlines()[-1])


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and each option's default where it says something (not for the
    lists and the switch, whose help says what they default to)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, (list, bool)):
            return action.help or ""
        return super()._get_help_string(action)


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Formatter)
    parser.add_argument("--code", default="1110", help="the synthetic set's factors (misc/render_syn.py --code)")
    parser.add_argument("--n", type=int, default=5000, help="training images of the synthetic set")
    parser.add_argument("--pretrain-epochs", type=int, default=20, help="epochs of each method's pretraining")
    parser.add_argument("--probe-epochs", type=int, default=10, help="epochs of each linear probe")
    parser.add_argument("--width", type=int, default=16, help="ResNet.width")
    parser.add_argument("--backbone", choices=("r9", "vit"), default="r9", help="ResNet-9 or ViT-Tiny (syn/vit/*)")
    parser.add_argument("--depth", type=int, default=12, help="ViT.depth: the ViT's blocks")
    parser.add_argument("--reduced", action="store_true", help="the reduced setting: " + ", ".join(
        f"--{key.replace('_', '-')} {value}" for key, value in REDUCED.items()) + " (for the 2-core CPU)")
    parser.add_argument("--methods", nargs="*", default=None, metavar="METHOD",
                        help=f"the methods to pretrain (default, ResNet-9: {' '.join(METHODS)}; ViT: "
                             f"{' '.join(VIT_METHODS)})")
    parser.add_argument("-p", "--pretrain-params", nargs="*", default=[], metavar="BINDING",
                        help="gin bindings for every method's pretraining, e.g. 'dataloader.batch_size = 64' to "
                        "try a config's alternative (compare the *_probe_syn_valid figures)")
    parser.add_argument("--no-baselines", action="store_true", help="leave out random, calibrated and their L-only "
                        "twins (same seed: they do not change with the methods' settings)")
    args = parser.parse_args()
    if min(args.pretrain_epochs, args.probe_epochs) < 2:
        parser.error("--pretrain-epochs and --probe-epochs must be at least 2 (a warmup epoch, then the rest)")
    if args.reduced:
        for key, value in REDUCED.items():
            setattr(args, key, value)
    offered = VIT_METHODS if args.backbone == "vit" else METHODS
    args.methods = list(offered) if args.methods is None else args.methods
    unknown = [method for method in args.methods if method not in offered]
    if unknown:
        parser.error(f"--methods {' '.join(unknown)}: not offered on {args.backbone}; choose from {' '.join(offered)}")
    return args


def main() -> None:
    args = options()
    root = paths.DATA_DIR / "bench_ssl"
    shutil.rmtree(root, ignore_errors=True)
    exp_dir = root / "exp"
    env = dict(os.environ, SELFSTUDY_DATA_DIR=str(root / "data"), SELFSTUDY_EXP_DIR=str(exp_dir),
               SELFSTUDY_OFFLINE="1")
    vit = args.backbone == "vit"
    common = [f"ViT.depth = {args.depth}" if vit else f"ResNet.width = {args.width}", "BaseDataset.num_valid = 500"]
    probe = ["dataloader.batch_size = 256", "scheduler.target_lrs = [0.2, 0.0]",
             *(SGD_PROBE if vit else [])]  # every probe alike
    figures: dict[str, object] = {"code": args.code, "n": args.n, "pretrain_epochs": args.pretrain_epochs,
                                  "probe_epochs": args.probe_epochs, "backbone": args.backbone,
                                  **({"depth": args.depth} if vit else {"width": args.width}),
                                  "pretrain_params": args.pretrain_params}
    arch = args.backbone
    try:
        run("misc/render_syn.py", "--code", args.code, "--n", str(args.n), "--res", "32", "-o", args.code, env=env)
        baselines = [] if args.no_baselines else ["random"] if vit else ["random", "calibrated"]
        sources = [*baselines, *(method for method in args.methods if method != "cmc")]
        if "cmc" in args.methods:  # the same images in CIELAB, and baselines that see only L, as CMC's backbone
            run("misc/render_syn.py", "--code", args.code, "--n", str(args.n), "--res", "32", "--to-lab",
                "-o", f"{args.code}_lab", env=env)
            sources += [*(f"{baseline}_lab" for baseline in baselines), "cmc"]
        for source in sources:
            lab = source == "cmc" or source.endswith("_lab")
            syn = [f"SynDataset.dataset_choice = '{args.code}{'_lab' if lab else ''}'"]
            # CMC's backbone encodes the L channel: its probe is CMCTask's own linear probe, trained
            # on the frozen backbone's features of the L view (Wrapper.finetune_selfsup = False).
            probe_config, frozen = ("cmc", "Wrapper.finetune_selfsup = False") if lab else (
                "classify", "Wrapper.finetune_classifier = False")
            start = ["Wrapper.calibrate_random = False"] if source == "random" else []  # (random_lab: a
            # probe of CMCTask, a self-supervised task, is never calibrated)
            if source.startswith("calibrated"):  # one pass at learning rate 0: random weights, BatchNorm statistics
                run("main.py", "-l", "-q", "-e", f"pre_{source}", "-g", f"syn/{arch}/{probe_config}", "-p", *common,
                    *probe, *syn, "scheduler.milestones = [1]", "scheduler.target_lrs = [0.0]", env=env)
            elif not source.startswith("random"):
                run("main.py", "-l", "-q", "-e", f"pre_{source}", "-g", f"syn/{arch}/{source}", "-p", *common, *syn,
                    f"scheduler.milestones = [1, {args.pretrain_epochs}]", *args.pretrain_params, env=env)
                record(figures, f"{source}_online_probe", final(exp_dir, f"pre_{source}")["valid_accuracy"])
            if not source.startswith("random"):
                run("misc/move_snapshots.py", "-e", f"pre_{source}", "-m", env=env)
                start = [f"Wrapper.pretrained = 'pre_{source}'", "Wrapper.ignore_pretrained_fc = True"]
            for target, extra in (("syn", syn), ("digits", ["session.test_iters = 0"])):
                name = f"probe_{source}_{target}"
                run("main.py", "-l", "-q", "-e", name, "-g", f"{target}/{arch}/{probe_config}", "-p", *common, *extra,
                    *probe, *start, frozen, f"scheduler.milestones = [1, {args.probe_epochs}]",
                    "BaseDataset.num_valid = 300" if target == "digits" else "BaseDataset.num_valid = 500", env=env)
                result = final(exp_dir, name)
                record(figures, f"{source}_probe_{target}_valid", result["valid_accuracy"])
                if target == "syn":  # reported, never chosen on
                    record(figures, f"{source}_probe_{target}_test", result["test_accuracy"])
            if not lab:  # the kNN classifier on the same frozen features, in-domain
                run("main.py", "-l", "-q", "-e", f"knn_{source}", "-g", f"syn/{arch}/classify", "-p", *common, *syn,
                    *start, "Wrapper.finetune_classifier = False", *KNN, env=env)
                result = final(exp_dir, f"knn_{source}")
                record(figures, f"{source}_knn_syn_valid", result["valid_accuracy"])
                record(figures, f"{source}_knn_syn_test", result["test_accuracy"])  # reported, never chosen on
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["seconds"] = round(time.perf_counter() - START)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
