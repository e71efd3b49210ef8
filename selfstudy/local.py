"""`-l`: run a sweep's trials one after another in this process, without Ray workers.

Each trial directory gets the same files a Ray Tune trial gets (see `selfstudy.folders`),
so `util.vis` and `misc/move_snapshots.py` read both alike. Like a Ray sweep, a `-l` sweep
goes on past a failed trial (its error goes to the trial's error.txt), retries a crashed
trial from its last checkpoint up to `max_failures` times, and continues where it stopped
on `--resume`: finished trials are skipped, unfinished ones continue from their newest
checkpoint (from the start if they have none).
"""

from __future__ import annotations

import json
import math
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

from selfstudy import folders
from selfstudy.checkpoint import UnsafeSnapshot, load_snapshot
from selfstudy.durable import append_line, is_disk_error
from selfstudy.errors import UserError
from selfstudy.progress import progress_line, say
from selfstudy.rayconfig import RayConfig
from selfstudy.trials import open_trial


def local_trial_dir(exp_dir: Path, index: int) -> Path:
    return exp_dir / f"trial_local_{index:05d}"


def run_local(exp_dir: Path, variants: list[dict[str, Any]], ray_config: RayConfig,
              resources: dict[str, float], quiet: bool = False) -> None:
    """Run every variant that has not finished; a failed trial is recorded and the sweep goes on."""
    ended = 0
    for index, config in enumerate(variants):
        trial_dir = local_trial_dir(exp_dir, index)
        if (trial_dir / folders.PARAMS_FILE).exists() and complete(trial_dir, ray_config):
            ended += 1
            continue
        trial_dir.mkdir(parents=True, exist_ok=True)
        folders.write_json(trial_dir / folders.PARAMS_FILE, config)
        for attempt in range(ray_config.max_failures + 1):
            try:
                run_trial(trial_dir, config, ray_config, int(resources["cpu"]), quiet)
                break
            except Exception as err:  # noqa: BLE001  (any failure of one trial is recorded; the sweep goes on)
                if is_disk_error(err):  # except a full disk's: retrying only fails again
                    raise
                text = f"{type(err).__name__}: {err}" if isinstance(err, UserError) else traceback.format_exc()
                folders.write_error(trial_dir, f"Failure # {attempt + 1}\n{text}")
                if attempt < ray_config.max_failures and not quiet:  # the last failure is reported with the results
                    print(f"{trial_dir.name} failed: {folders.error_line(text)}; retrying from its last checkpoint")
        ended += 1
        if quiet:
            results = folders.read_results(trial_dir)
            status = "finished" if folders.trial_status(trial_dir).state == "finished" else "errored"
            say(progress_line(trial_dir.name, status, ray_config.metric, results[-1].get(ray_config.metric)
                              if results else None, ended, len(variants)))


def complete(trial_dir: Path, ray_config: RayConfig) -> bool:
    """Finished, with its final checkpoint where one is wanted (a crash between the last epoch's
    report and that checkpoint leaves the trial to run its last epoch again on --resume)."""
    if folders.trial_status(trial_dir).state != "finished":
        return False
    if not ray_config.checkpoint_at_end or trial_dir.name in folders.moved_snapshots(trial_dir.parent):
        return True
    snapshot = folders.latest_snapshot(trial_dir)
    last_epoch = folders.read_results(trial_dir)[-1]["training_iteration"]
    try:
        return snapshot is not None and load_snapshot(snapshot, "--resume")["epoch"] == last_epoch
    except UnsafeSnapshot:
        raise
    except UserError:  # damaged: the trial continues from an older checkpoint (Trial.restore)
        return False


class Events:
    """TensorBoard event files of a trial, with the tags Ray Tune writes (`ray/tune/<metric>`), so
    `tensorboard --logdir EXP_DIR/<exp_id>/runs` shows -l trials like Ray's. A trial that continues
    from a checkpoint writes its files afresh from the epochs it keeps."""

    PATTERN = "events.out.tfevents.*"

    def __init__(self, trial_dir: Path, kept: list[dict[str, Any]]):
        from tensorboardX import SummaryWriter

        for old in trial_dir.glob(self.PATTERN):
            old.unlink()
        self.writer = SummaryWriter(str(trial_dir), flush_secs=5)
        for row in kept:
            self.add(row)

    def add(self, metrics: dict[str, Any]) -> None:
        step = metrics["training_iteration"]
        for name, value in flat(metrics).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and \
                    name not in ("training_iteration", "timestamp", "time_total_s"):
                self.writer.add_scalar(f"ray/tune/{name}", value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def flat(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested reports (a probe grid's `heads`) as Ray's logger names them: 'heads/0/valid_accuracy'."""
    found: dict[str, Any] = {}
    for name, value in metrics.items():
        if isinstance(value, dict) and name != "config":
            found.update(flat(value, f"{prefix}{name}/"))
        else:
            found[f"{prefix}{name}"] = value
    return found


def run_trial(trial_dir: Path, config: dict[str, Any], ray_config: RayConfig, threads: int, quiet: bool) -> None:
    """Run one trial to its end, continuing from its newest checkpoint if it has one."""
    trial = open_trial(config, trial_dir, num_threads=threads)
    events = None
    try:
        snapshot = folders.latest_snapshot(trial_dir)
        if snapshot is not None:
            trial.restore(snapshot.parent)
        folders.truncate_results(trial_dir, trial.epoch)  # epochs past the checkpoint are trained again
        events = Events(trial_dir, folders.read_results(trial_dir))
        started = time.time()
        while not trial.done:
            tick = time.time()
            metrics = trial.run_epoch()
            metrics.update(training_iteration=trial.epoch, trial_id=trial_dir.name.removeprefix("trial_"),
                           time_this_iter_s=time.time() - tick, time_total_s=time.time() - started,
                           timestamp=int(time.time()), config=config)
            append_line(trial_dir / folders.RESULTS_FILE, json.dumps(metrics, default=str))
            events.add(metrics)
            if not quiet:
                print(f"{trial_dir.name} epoch {trial.epoch}: " + ", ".join(
                    f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("_loss", "_accuracy"))))
            frequency = ray_config.checkpoint_frequency
            if (frequency and trial.epoch % frequency == 0) or (trial.done and ray_config.checkpoint_at_end):
                trial.save(folders.next_checkpoint_dir(trial_dir))
                for old in folders.checkpoints(trial_dir)[:-max(ray_config.keep_checkpoints, 1)]:
                    shutil.rmtree(old)
    finally:
        if events is not None:
            events.close()
        trial.close()
