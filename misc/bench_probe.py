"""Speed of a probe grid: K = 8 linear heads trained together on features encoded once, against
one linear probe trial (the frozen backbone run over every batch of every epoch) and against a
grid of one head, in the same process. Prints one JSON line.

    python misc/bench_probe.py                        # digits/r9/probe_grid: 10 epochs, all images
    python misc/bench_probe.py -p 'ResNet.width = 64' 'dataloader.batch_size = 512'

Every run is a whole trial as a sweep runs it (built, data on the device, every epoch), the
fastest of `--rounds` interleaved rounds (the first trial of the process, which reads the data
files and warms up, is not counted). The 8 heads are 4 peak learning rates x 2 weight decays on
every training image; the one probe trial and the one-head grid have the config's own
learning rate and weight decay (and so the same accuracy).
Figures:
    grid8_vs_one_trial   time of the 8-head grid / time of one probe trial (goal: <= 1.5)
    grid8_vs_grid1       time of the 8-head grid / time of a one-head grid
    grid8_setup_share    the 8-head grid's building and encoding / its whole time
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfstudy.config import split_binding  # noqa: E402
from selfstudy.trials import open_trial  # noqa: E402

LRS, WEIGHT_DECAYS = [0.03, 0.1, 0.3, 1.0], [0.0, 5e-4]
GRIDS = {  # probe_grid.* of each run; None everywhere: an ordinary probe trial
    "one_trial": {"lrs": "None", "weight_decays": "None", "budgets": "None", "views": "0"},
    "grid1": {"lrs": "None", "weight_decays": "None", "budgets": "[0]", "views": "0"},  # the same one head
    "grid8": {"lrs": str(LRS), "weight_decays": str(WEIGHT_DECAYS), "budgets": "[0]", "views": "0"},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_trial(config: dict[str, Any], device: torch.device) -> tuple[float, float, dict[str, Any]]:
    """Seconds to build the trial (data on the device, features encoded), seconds in all, last metrics."""
    start = time.perf_counter()
    trial = open_trial(config)
    sync(device)
    built = time.perf_counter()
    metrics: dict[str, Any] = {}
    while not trial.done:
        metrics = trial.run_epoch()
    sync(device)
    trial.close()
    return built - start, time.perf_counter() - start, metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-g", "--gin", default="digits/r9/probe_grid")
    parser.add_argument("-p", "--params", nargs="*", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    own = dict(split_binding(b) for b in args.params)
    configs = {name: {"gin_config": [args.gin], "seed": 0,
                      "gin_params": {**own, **{f"probe_grid.{k}": v for k, v in grid.items()}}}
               for name, grid in GRIDS.items()}
    configs["one_trial"]["gin_params"].update({"BaseDataset.semisupervised": "None"})
    run_trial(configs["grid1"], device)  # reads the data files, imports, warms up: not counted
    rounds = [{name: run_trial(config, device) for name, config in configs.items()} for _ in range(args.rounds)]
    fastest = {name: min((r[name] for r in rounds), key=lambda timing: timing[1]) for name in configs}
    seconds = {name: timing[1] for name, timing in fastest.items()}
    last = fastest["grid8"][2]
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "config": args.gin, "params": args.params, "heads": len(last["heads"]), "epochs": last["epoch"],
        "one_trial_s": round(seconds["one_trial"], 3), "grid1_s": round(seconds["grid1"], 3),
        "grid8_s": round(seconds["grid8"], 3),
        "grid8_vs_one_trial": round(seconds["grid8"] / seconds["one_trial"], 3),
        "grid8_vs_grid1": round(seconds["grid8"] / seconds["grid1"], 3),
        "grid8_setup_share": round(fastest["grid8"][0] / seconds["grid8"], 3),
        "one_trial_valid_accuracy": round(fastest["one_trial"][2]["valid_accuracy"], 4),
        "grid1_valid_accuracy": round(fastest["grid1"][2]["valid_accuracy"], 4),
    }))


if __name__ == "__main__":
    main()
