"""`-l`: run a sweep's trials one after another in this process, without Ray workers.

Each trial directory gets the same files a Ray Tune trial gets (`params.json`,
`result.json`, `checkpoint_NNNNNN/snapshot`), so `util.vis` and `misc/move_snapshots.py`
read both alike.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from selfstudy.rayconfig import RayConfig
from selfstudy.trial import Trial


def run_local(exp_dir: Path, variants: list[dict[str, Any]], ray_config: RayConfig,
              resources: dict[str, float], quiet: bool = False) -> None:
    for index, config in enumerate(variants):
        trial_id = f"local_{index:05d}"
        trial_dir = exp_dir / f"trial_{trial_id}"
        trial_dir.mkdir(parents=True)
        (trial_dir / "params.json").write_text(json.dumps(config, indent=2, default=str))
        trial = Trial(config, trial_dir, num_threads=int(resources["cpu"]))
        checkpoints: list[Path] = []
        started = time.time()
        with open(trial_dir / "result.json", "a") as results:
            while True:
                tick = time.time()
                metrics = trial.run_epoch()
                metrics.update(training_iteration=trial.epoch, trial_id=trial_id, time_this_iter_s=time.time() - tick,
                               time_total_s=time.time() - started, timestamp=int(time.time()), config=config)
                results.write(json.dumps(metrics, default=str) + "\n")
                results.flush()
                if not quiet:
                    print(f"{trial_id} epoch {trial.epoch}: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("_loss", "_accuracy"))))
                frequency = ray_config.checkpoint_frequency
                if (frequency and trial.epoch % frequency == 0) or (trial.done and ray_config.checkpoint_at_end):
                    checkpoints.append(trial.save(trial_dir / f"checkpoint_{len(checkpoints):06d}").parent)
                    while len(checkpoints) > max(ray_config.keep_checkpoints, 1):
                        shutil.rmtree(checkpoints.pop(0))
                if trial.done:
                    break
        trial.close()
