"""Load an experiment's trials into pandas.

    from util import vis
    df = vis.load_experiment("pretrain-rotate")   # one row per trial
    hist = vis.load_history("pretrain-rotate")    # one row per trial and epoch

Config columns are named by their gin binding (`BaseDataset.semisupervised`), including
the -p bindings; `gin_config` and `seed` are columns too. Every trial has a row, also one
that failed before its first epoch: `status` is 'finished', 'stopped' (by a scheduler),
'errored' (`error` says why) or 'running' (not finished: `--resume` continues it). A trial
resumed from a checkpoint reports some epochs twice: the history keeps the last report of each.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pandas as pd

from selfstudy import folders

METRIC_PREFIXES = ("train_", "valid_", "test_")


def trial_dirs(exp_id: str) -> list[Path]:
    """Trial directories of an experiment (each holds a params.json)."""
    return folders.trial_dirs(folders.existing_exp_dir(exp_id))


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """A trial config flattened to columns named by gin binding."""
    columns = {key: value for key, value in config.items() if key != "gin_params"}
    gin_config = columns.get("gin_config")
    if isinstance(gin_config, list):
        columns["gin_config"] = ",".join(gin_config)
    for key, text in (config.get("gin_params") or {}).items():
        columns[key] = _literal(text)
    return columns


def _trial_frame(trial_dir: Path) -> pd.DataFrame:
    """The trial's epochs (one row each; a single row without metrics if it reported none),
    with its config columns, `trial`, `status` and `error`."""
    rows = [{k: v for k, v in row.items() if k != "config"} for row in folders.read_results(trial_dir)]
    frame = pd.DataFrame(rows).drop_duplicates("training_iteration", keep="last") if rows else pd.DataFrame([{}])
    for key, value in config_columns(folders.read_params(trial_dir)).items():
        frame[key] = [value] * len(frame)
    status = folders.trial_status(trial_dir)
    frame["trial"], frame["status"], frame["error"] = trial_dir.name, status.state, status.error
    return frame


def load_history(exp_id: str) -> pd.DataFrame:
    """One row per trial and epoch: config columns, then that epoch's metrics. A trial that
    reported no epoch has one row with its config and status."""
    frames = [_trial_frame(trial_dir) for trial_dir in trial_dirs(exp_id)]
    if not frames:
        return pd.DataFrame(columns=["trial", "status", "error"])
    history = pd.concat(frames, ignore_index=True)
    if "training_iteration" not in history:
        history["training_iteration"] = pd.NA
    return history.sort_values(["trial", "training_iteration"], ignore_index=True)


def load_experiment(exp_id: str) -> pd.DataFrame:
    """One row per trial: config columns, the last epoch's metrics, `best_accuracy`, `status`, `error`."""
    history = load_history(exp_id)
    if history.empty:
        return history
    last = history.groupby("trial", sort=True).tail(1).set_index("trial")
    if "mean_accuracy" in history:
        last["best_accuracy"] = history.groupby("trial")["mean_accuracy"].max()
    return last.reset_index()
