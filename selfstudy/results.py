"""An experiment's trials read back from their folders: one pandas row per trial (per head of a
probe grid) or per trial and epoch, with each trial's status and the source its model started from.

Config columns are named by their gin binding (`BaseDataset.semisupervised`), including
the -p bindings; `gin_config` and `seed` are columns too. Every trial has a row, also one
that failed before its first epoch: `status` is 'finished', 'stopped' (by a scheduler),
'errored' (`error` says why) or 'running' (not finished: `--resume` continues it). A trial
resumed from a checkpoint reports some epochs twice: the history keeps the last report of each.
A probe grid trial (`selfstudy.probe`) has a row per head: its settings are in the columns of
the probe trial it stands for (`BaseDataset.semisupervised`, `optimizer.weight_decay`,
`scheduler.scale`), with `head` (its index; empty for other trials) and `peak_lr`; a head whose
loss diverged is 'diverged' (an outcome of its settings; `error` says when), not 'errored'.
`source` names what the trial's model started from: 'scratch', or the last path component of
`Wrapper.pretrained`; `stage` names the stage folder of a multi-stage study ('' for a trial
directly in the experiment folder).

The driver's report (`selfstudy.report`) and the notebook helpers (`util.vis`) both read trials here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

import paths
from selfstudy import folders
from selfstudy.config import config_columns
from selfstudy.errors import UserError
from selfstudy.folders import DIVERGED

PRETRAINED = "Wrapper.pretrained"  # the binding that names a trial's pretrained weights
SCRATCH = "scratch"  # the `source` of a trial trained from random weights
COMPLETED = ("finished", "stopped")  # the statuses whose metrics count


def source_label(pretrained: Any) -> str:
    """'scratch' for a missing, None, NaN or empty `Wrapper.pretrained`, else its last path component
    ('study/pretrain/syn_r9_rotate' -> 'syn_r9_rotate'); a final 'snapshot' (a path to the file) is skipped."""
    if pretrained is None or (isinstance(pretrained, float) and math.isnan(pretrained)):
        return SCRATCH
    parts = [part for part in str(pretrained).strip().replace("\\", "/").split("/") if part]
    if parts and parts[-1] == folders.SNAPSHOT:
        parts.pop()
    return parts[-1] if parts else SCRATCH


def experiment_dir(exp: str | Path) -> Path:
    """The folder of experiment `exp`: a name in EXP_DIR, or the folder itself as a Path."""
    if not isinstance(exp, Path):
        return folders.existing_exp_dir(exp)
    if not exp.is_dir():
        raise UserError(f"no experiment folder {exp}: give an experiment name in {paths.EXP_DIR} or an existing folder")
    return exp


def trial_dirs(exp: str | Path) -> list[Path]:
    """Trial directories of an experiment (each holds a params.json); `exp` as in `experiment_dir`."""
    return folders.trial_dirs(experiment_dir(exp))


def _trial_frame(trial_dir: Path, exp_dir: Path) -> pd.DataFrame:
    """The trial's epochs (one row each; a single row without metrics if it reported none),
    with its config columns, `trial`, `stage`, `source`, `status`, `error` and `retries`; a
    probe grid's,
    one row per head and epoch (see `_head_rows`)."""
    rows = [{k: v for k, v in row.items() if k != "config"} for row in folders.read_results(trial_dir)]
    config = config_columns(folders.read_params(trial_dir))
    status = folders.trial_status(trial_dir)
    heads = folders.read_probe_grid(trial_dir)
    if heads is not None:
        return pd.concat([_head_rows(rows, head, config, status) for head in heads], ignore_index=True).assign(
            trial=trial_dir.name, stage=trial_dir.parent.name if trial_dir.parent != exp_dir else "")
    frame = _epochs(rows)
    for key, value in config.items():
        frame[key] = column(value, frame)
    frame["trial"], frame["status"], frame["error"] = trial_dir.name, status.state, status.error
    frame["retries"] = status.retries
    frame["stage"] = trial_dir.parent.name if trial_dir.parent != exp_dir else ""
    frame["source"] = source_label(config.get(PRETRAINED))
    return frame


def column(value: Any, frame: pd.DataFrame) -> pd.Series:
    """A config value for every row of `frame`; a bool stays a bool beside numbers of other trials
    (concatenated with an integer column, a bool column would become 1 and 0)."""
    return pd.Series([value] * len(frame), index=frame.index, dtype=object if isinstance(value, bool) else None)


def _epochs(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per epoch, the last report of each (a single empty row without any)."""
    return pd.DataFrame(rows).drop_duplicates("training_iteration", keep="last") if rows else pd.DataFrame([{}])


def _head_rows(rows: list[dict[str, Any]], head: dict[str, Any], config: dict[str, Any],
               status: folders.TrialStatus) -> pd.DataFrame:
    """A probe grid head's epochs: the trial's bookkeeping with the head's own metrics, its
    settings as config columns (those of the probe trial it stands for), `head`, `peak_lr`.
    A head that diverged in a trial that completed (finished, or stopped by a scheduler) is
    'diverged' (`error` says when); the trial's status is every other head's."""
    key = str(head["head"])
    epochs = []
    for row in rows:
        reported = row.get("heads", {})
        shared = {k: v for k, v in row.items() if k not in {"heads", "best_head"}.union(*map(set, reported.values()))}
        epochs.append({**shared, **reported.get(key, {})})
    frame = _epochs(epochs)
    for name, value in {**config, **head["bindings"]}.items():
        frame[name] = column(value, frame)
    diverged = next((row["diverged"] for row in reversed(epochs) if row.get("diverged")), None)
    frame["head"], frame["peak_lr"] = head["head"], head.get("peak_lr")
    frame["status"] = DIVERGED if diverged and status.state in COMPLETED else status.state
    frame["error"] = status.error or diverged
    frame["retries"] = status.retries
    frame["source"] = source_label(config.get(PRETRAINED))
    return frame


def load_history(exp: str | Path) -> pd.DataFrame:
    """One row per trial and epoch: config columns, then that epoch's metrics. A trial that
    reported no epoch has one row with its config and status. Rows run stage by stage (in the
    order `folders.trial_dirs` gives them), then by trial and epoch. `exp`: an experiment name in
    EXP_DIR, or an experiment (or stage) folder as a Path."""
    exp_dir = experiment_dir(exp)
    frames = [_trial_frame(trial_dir, exp_dir) for trial_dir in folders.trial_dirs(exp_dir)]
    if not frames:
        return pd.DataFrame(columns=["trial", "stage", "source", "status", "error"])
    history = pd.concat(frames, ignore_index=True)
    if "training_iteration" not in history:
        history["training_iteration"] = pd.NA
    ran = {stage: i for i, stage in enumerate(dict.fromkeys(history["stage"]))}  # stages in the order they ran
    order = ["stage", "trial"] + ["head"] * ("head" in history) + ["training_iteration"]
    return history.sort_values(order, ignore_index=True,
                               key=lambda column: column.map(ran) if column.name == "stage" else column)


def load_experiment(exp: str | Path) -> pd.DataFrame:
    """One row per trial: `stage`, `trial`, config columns, `source`, the last epoch's metrics,
    `best_accuracy`, `status`, `error`, `retries` (how often it was started again after a
    failure). `exp` as in `load_history`."""
    history = load_history(exp)
    if history.empty:
        return history
    keys = ["stage", "trial"] + ["head"] * ("head" in history)  # a probe grid's heads are rows of their own
    last = history.groupby(keys, sort=False, dropna=False).tail(1).set_index(keys)
    if "mean_accuracy" in history:
        last["best_accuracy"] = history.groupby(keys, dropna=False)["mean_accuracy"].max()
    return last.reset_index()


def started_later(directory: Path) -> list[dict[str, Any]]:
    """The configs of the trials of `directory` that have not started yet. Where a sweep drew
    random values, which differ from those Tune draws, the trials started count against the
    first of the rest; for a searcher's sweep, an empty config per trial to come."""
    record = folders.read_experiment(directory) or {}
    started = [folders.read_params(trial_dir) for trial_dir in folders.trial_dirs(directory)]
    variants = record.get("variants")
    if variants is None:
        return [{}] * max(record.get("trials", 0) - len(started), 0)
    remaining: dict[str, list[int]] = {}
    for index, config in enumerate(variants):
        remaining.setdefault(json.dumps(config, sort_keys=True, default=str), []).append(index)
    unmatched = 0
    for config in started:
        indices = remaining.get(json.dumps(config, sort_keys=True, default=str))
        if indices:
            indices.pop(0)
        else:
            unmatched += 1
    left = sorted(index for indices in remaining.values() for index in indices)[unmatched:]
    return [variants[index] for index in left]
