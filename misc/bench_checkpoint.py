"""What a whole checkpoint costs: `save_snapshot` (serialised in memory, written to a temporary
file, fsynced, renamed, the folder synced) against a plain `torch.save` to the same folder, on
the state of a ResNet with its SGD momentum, as a trial checkpoints it. Prints one JSON line.

    python misc/bench_checkpoint.py [--arch resnet50] [--repeats 5] [--dir EXP_DIR]

    durable_vs_plain   seconds per `save_snapshot` / seconds per plain `torch.save`
    durable_s, plain_s the medians of `--repeats` writes; mb: the snapshot's size

Both are timed in the same run, alternating, into the same folder (EXP_DIR by default, where
trials write theirs), so the ratio holds on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paths  # noqa: E402
from selfstudy.checkpoint import save_snapshot  # noqa: E402
from selfstudy.models import ResNet  # noqa: E402


def trial_state(arch: str) -> dict:
    """The parts of a trial's snapshot that weigh: weights and buffers, and SGD's momentum."""
    model = ResNet(arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1, "epoch": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=paths.EXP_DIR)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    state = trial_state(args.arch)
    durable, plain = [], []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix=".bench_checkpoint_") as scratch:
        folder = Path(scratch)
        for _ in range(args.repeats):
            start = time.perf_counter()
            path = save_snapshot(folder / "durable", state)
            durable.append(time.perf_counter() - start)
            start = time.perf_counter()
            torch.save(state, folder / "plain")
            plain.append(time.perf_counter() - start)
        size = path.stat().st_size
    print(json.dumps({"bench": "checkpoint", "arch": args.arch, "mb": round(size / 1e6, 1),
                      "durable_s": round(statistics.median(durable), 4), "plain_s": round(statistics.median(plain), 4),
                      "durable_vs_plain": round(statistics.median(durable) / statistics.median(plain), 2)}))


if __name__ == "__main__":
    main()
