"""Per-trial overhead of a sweep through Ray, with and without warm trials. Prints one JSON line.

    python misc/bench_sweep.py [--trials 8] [--trials-per-gpu 1] [--modes cold warm] [-p BINDING ...]

Each mode runs `main.py -r` on a sweep of identical small trials (seeds 0..n-1 of
digits/r9/classify, two short epochs) twice: with one trial and with n. The per-trial
overhead is the n-trial sweep's wall time minus the 1-trial sweep's, less the extra trials'
training time (their reported time_total_s, divided by the trials that run at once), per extra
trial: what starting, building and finishing a trial costs beyond its epochs, with Ray's own
start and stop taken out (checkpoints as by default). `warm` reuses worker processes
(RayConfig.reuse_actors, the default), `cold` starts one per trial (`--modes` picks them);
`warm_vs_cold_wall` compares the n-trial sweeps' wall times and `*_one_wall_s` is the 1-trial
sweep's (Ray's start and stop, one trial). `--trials-per-gpu` sets RayConfig.trials_per_gpu:
where trials share a GPU their training times lengthen, so the overhead figure is then only a
rough one (it can come out negative). Everything lives in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = ["ResNet.width = 8", "dataloader.batch_size = 64", "session.train_iters = 4", "session.valid_iters = 2",
        "scheduler.milestones = [1, 2]", "scheduler.target_lrs = [0.05, 0.0]"]


def sweep(folder: Path, name: str, trials: int, reuse: bool, per_gpu: int, params: list[str],
          env: dict[str, str]) -> dict:
    config = folder / f"{name}.py"
    config.write_text("from ray import tune\n"  # checkpoints as by default: every epoch and at the end
                      f"search_space = {{'seed': tune.grid_search(list(range({trials})))}}\n"
                      f"reuse_actors = {reuse}\ntrials_per_gpu = {per_gpu}\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "-q", "-e", name, "-r", str(config), "-p",
                           *TINY, *params], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        errors = "".join(e.read_text() for e in (Path(env["SELFSTUDY_EXP_DIR"]) / name).glob("*/error.txt"))
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}{errors[-3000:]}")
    from util import vis

    frame = vis.load_experiment(name)
    pids = {json.loads((Path(env["SELFSTUDY_EXP_DIR"]) / name / t / "trial.json").read_text())["pid"]
            for t in frame["trial"]}
    return {"wall": wall, "train": float(frame["time_total_s"].sum()), "processes": len(pids)}


def main() -> None:
    from selfstudy.rayconfig import RayConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("-p", "--params", nargs="*", default=[])
    parser.add_argument("--trials-per-gpu", type=int, default=RayConfig.trials_per_gpu,
                        help="the sweep's RayConfig.trials_per_gpu (where GPUs exist)")
    parser.add_argument("--modes", nargs="+", choices=("cold", "warm"), default=["cold", "warm"],
                        help="which sweeps to run (default: both)")
    args = parser.parse_args()
    if args.trials < 2:
        parser.error("--trials must be at least 2: the overhead compares a sweep of that many trials with one of 1")
    if args.trials_per_gpu < 1:
        parser.error("--trials-per-gpu must be at least 1")
    import torch

    from selfstudy.sweep import trial_resources

    cluster = {"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}
    slots_of = trial_resources(RayConfig("bench", {}, trials_per_gpu=args.trials_per_gpu), cluster)
    at_once = int(min(cluster["CPU"] // slots_of["cpu"], cluster["GPU"] / slots_of.get("gpu", 1) if cluster["GPU"]
                      else float("inf"))) or 1
    figures: dict[str, object] = {
        "device": torch.cuda.get_device_name() if cluster["GPU"] else f"cpu x{cluster['CPU']}",
        "trials": args.trials, "trials_per_gpu": args.trials_per_gpu, "at_once": at_once}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "SELFSTUDY_EXP_DIR": str(folder / "exp"), "RAY_AUTH_MODE": "disabled"}
        os.environ["SELFSTUDY_EXP_DIR"] = env["SELFSTUDY_EXP_DIR"]
        import paths

        paths.EXP_DIR = folder / "exp"
        for mode in dict.fromkeys(args.modes):
            reuse = mode == "warm"
            one = sweep(folder, f"{mode}_1", 1, reuse, args.trials_per_gpu, args.params, env)
            many = sweep(folder, f"{mode}_{args.trials}", args.trials, reuse, args.trials_per_gpu, args.params, env)
            extra = args.trials - 1
            overhead = (many["wall"] - one["wall"] - (many["train"] - one["train"]) / at_once) / extra
            figures.update({f"{mode}_overhead_s": round(overhead, 2), f"{mode}_one_wall_s": round(one["wall"], 1),
                            f"{mode}_wall_s": round(many["wall"], 1),
                            f"{mode}_train_s": round(many["train"], 1), f"{mode}_processes": many["processes"]})
    if {"cold", "warm"} <= set(args.modes):
        figures["warm_vs_cold_wall"] = round(figures["warm_wall_s"] / figures["cold_wall_s"], 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
