"""Synthetic data: rendering speed, and whether the factors make a dataset harder.
Prints one JSON line.

    python misc/bench_syn.py [--n 10000] [--epochs 10]

    render_20k_s          wall seconds of `misc/render_syn.py --code 1111 --n 20000 --res 32`
                          (20,000 training + 2,000 test images, process start included)
    render_images_per_s   images/s of that run
    test_accuracy_0000    ResNet-9 (config syn/r9/classify) trained through `main.py -l` on an
    test_accuracy_1111    n-image set of code 0000 / 1111 for the same epochs; chance is 0.1
    harder_by             test_accuracy_0000 - test_accuracy_1111
Everything is written under DATA_DIR/bench_syn and removed at the end.
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


def run(script: str, *args: str, env: dict[str, str]) -> float:
    """Run a CLI of the project; returns its wall seconds (stops the benchmark if it fails)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / script), *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000, help="training images per set (default 10000)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    args = parser.parse_args()
    root = paths.DATA_DIR / "bench_syn"
    shutil.rmtree(root, ignore_errors=True)
    env = dict(os.environ, SELFSTUDY_DATA_DIR=str(root / "data"), SELFSTUDY_EXP_DIR=str(root / "exp"),
               SELFSTUDY_OFFLINE="1")
    figures: dict[str, object] = {"n": args.n, "epochs": args.epochs}
    try:
        seconds = run("misc/render_syn.py", "--code", "1111", "--n", "20000", "--res", "32", "-o", "speed", env=env)
        figures.update(render_20k_s=round(seconds, 1), render_images_per_s=round(22000 / seconds))
        for code in ("0000", "1111"):
            run("misc/render_syn.py", "--code", code, "--n", str(args.n), "--res", "32", "-o", code, env=env)
            warmup = max(1, args.epochs // 5)
            run("main.py", "-l", "-q", "-e", f"syn_{code}", "-g", "syn/r9/classify", "-p",
                f"SynDataset.dataset_choice = '{code}'", f"scheduler.milestones = [{warmup}, {args.epochs}]",
                env=env)
            result = next((root / "exp" / f"syn_{code}").glob("*/result.json")).read_text().splitlines()[-1]
            figures[f"test_accuracy_{code}"] = round(json.loads(result)["test_accuracy"], 4)
        figures["harder_by"] = round(figures["test_accuracy_0000"] - figures["test_accuracy_1111"], 4)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
