"""Science check of the pretraining methods: does self-supervised pretraining on a synthetic set
(its labels unused) give features a linear probe can use, better than a random backbone?
Prints one JSON line.

    python misc/bench_ssl.py [--code 1111] [--n 5000] [--pretrain-epochs 6] [--probe-epochs 4]

For each method: `main.py -l -g syn/r9/<method>` pretrains ResNet-9 on the set,
`misc/move_snapshots.py` moves its checkpoint, and `main.py -l -g <dataset>/r9/classify` with
`Wrapper.pretrained`, `Wrapper.ignore_pretrained_fc` and `Wrapper.finetune_classifier` trains a
linear probe on the frozen features, in-domain (the same set, with its labels; test accuracy)
and transferred to digits (validation accuracy). The baseline `random` probes a randomly
initialised backbone (same seed, same budget). Also reported: each method's online linear
probe accuracy at the end of pretraining. Everything lives under DATA_DIR/bench_ssl and is
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paths  # noqa: E402

METHODS = ("rotate", "simclr", "moco", "byol")


def run(script: str, *args: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, str(ROOT / script), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def final(exp_dir: Path, name: str) -> dict:
    return json.loads(next((exp_dir / name).glob("*/result.json")).read_text().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", default="1111")
    parser.add_argument("--n", type=int, default=5000, help="training images of the synthetic set")
    parser.add_argument("--pretrain-epochs", type=int, default=6)
    parser.add_argument("--probe-epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=32, help="ResNet.width")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()
    root = paths.DATA_DIR / "bench_ssl"
    shutil.rmtree(root, ignore_errors=True)
    exp_dir = root / "exp"
    env = dict(os.environ, SELFSTUDY_DATA_DIR=str(root / "data"), SELFSTUDY_EXP_DIR=str(exp_dir),
               SELFSTUDY_OFFLINE="1")
    common = [f"ResNet.width = {args.width}", "dataloader.batch_size = 256", "BaseDataset.num_valid = 500"]
    figures: dict[str, object] = {"code": args.code, "n": args.n, "pretrain_epochs": args.pretrain_epochs,
                                  "probe_epochs": args.probe_epochs, "width": args.width}
    try:
        run("misc/render_syn.py", "--code", args.code, "--n", str(args.n), "--res", "32", "-o", args.code, env=env)
        syn = [f"SynDataset.dataset_choice = '{args.code}'"]
        for method in args.methods:
            run("main.py", "-l", "-q", "-e", f"pre_{method}", "-g", f"syn/r9/{method}", "-p", *common, *syn,
                f"scheduler.milestones = [1, {args.pretrain_epochs}]", env=env)
            figures[f"{method}_online_probe"] = round(final(exp_dir, f"pre_{method}")["valid_accuracy"], 4)
            run("misc/move_snapshots.py", "-e", f"pre_{method}", "-m", env=env)
        for source in (*args.methods, "random"):
            start = [] if source == "random" else [f"Wrapper.pretrained = 'pre_{source}'",
                                                   "Wrapper.ignore_pretrained_fc = True"]
            for target, extra in (("syn", syn), ("digits", ["session.test_iters = 0"])):
                name = f"probe_{source}_{target}"
                run("main.py", "-l", "-q", "-e", name, "-g", f"{target}/r9/classify", "-p", *common, *extra, *start,
                    "Wrapper.finetune_classifier = True", f"scheduler.milestones = [1, {args.probe_epochs}]",
                    "BaseDataset.num_valid = 300" if target == "digits" else "BaseDataset.num_valid = 500", env=env)
                result = final(exp_dir, name)
                figures[f"{source}_probe_{target}"] = round(result["test_accuracy" if target == "syn"
                                                                   else "valid_accuracy"], 4)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
