"""Scaling of a data-parallel trial (`workers_per_trial`). Prints one JSON line.

    python misc/bench_ddp.py [--workers 2] [--epochs 3] [-p BINDING ...]

Runs the same trial (digits/r9/classify, ResNet-9 of width 16, a global batch of 128, 16 batches
an epoch, no evaluation) through `main.py -r` twice: as `--workers` workers of one thread (CPU)
or one GPU each, and as one worker with as many threads (CPU) or one GPU. `images_per_s` is
training images over the epochs after the first (which pays for starting and compiling);
`scaling_efficiency` is the workers' images/s over the one worker's: 1.0 when N workers of 1
thread train as fast as 1 worker of N threads, and, on GPUs, N for N-fold throughput. Each worker
augments the whole global batch and trains on its share, so the augmentation does not scale.
Everything lives in a temporary folder, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRIAL = ["ResNet.width = 16", "dataloader.batch_size = 128", "session.train_iters = 16", "session.valid_iters = 0"]


def run(folder: Path, name: str, ray_config: str, params: list[str], env: dict[str, str]) -> dict:
    config = folder / f"{name}.py"
    config.write_text(f"search_space = {{}}\nreuse_actors = False\n{ray_config}\n")
    done = subprocess.run([sys.executable, str(ROOT / "main.py"), "-q", "-e", name, "-r", str(config), "-p",
                           *params], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        errors = "".join(e.read_text() for e in (Path(env["SELFSTUDY_EXP_DIR"]) / name).glob("*/error.txt"))
        raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}{errors[-3000:]}")
    trial = next((Path(env["SELFSTUDY_EXP_DIR"]) / name).glob("trial_*"))
    rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
    later = rows[1:]
    seconds = sum(r["time_this_iter_s"] for r in later)
    provenance = json.loads((trial / "trial.json").read_text())
    return {"images_per_s": 16 * 128 * len(later) / seconds, "workers": len(provenance.get("workers", [0])),
            "threads": provenance["threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers of the data-parallel trial (default 2)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each trial, the first not timed (default 3)")
    parser.add_argument("-p", dest="params", nargs="*", default=[], help="further gin bindings of both trials")
    args = parser.parse_args()
    if args.workers < 2 or args.epochs < 2:
        parser.error("--workers and --epochs must be at least 2")
    import torch

    gpus = torch.cuda.device_count()
    if gpus and gpus < args.workers:
        parser.error(f"--workers {args.workers} needs as many GPUs; this machine has {gpus}")
    each = {"cpu": 1, "gpu": 1} if gpus else {"cpu": 1}
    whole = {"cpu": 1, "gpu": 1} if gpus else {"cpu": args.workers}
    params = TRIAL + [f"scheduler.milestones = [1, {args.epochs}]", "scheduler.target_lrs = [0.05, 0.0]", *args.params]
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ, SELFSTUDY_EXP_DIR=str(Path(folder) / "exp"), RAY_AUTH_MODE="disabled")
        split = run(Path(folder), "split", f"workers_per_trial = {args.workers}\nresources_per_worker = {each}",
                    params, env)
        one = run(Path(folder), "one", f"resources_per_trial = {whole}", params, env)
    print(json.dumps({"device": "cuda" if gpus else "cpu", "workers": args.workers,
                      "split_images_per_s": round(split["images_per_s"], 1),
                      "one_images_per_s": round(one["images_per_s"], 1), "one_threads": one["threads"],
                      "scaling_efficiency": round(split["images_per_s"] / one["images_per_s"], 3)}))


if __name__ == "__main__":
    main()
