"""Load an experiment's trials into pandas.

    from util import vis
    df = vis.load_experiment("pretrain-rotate")   # one row per trial
    hist = vis.load_history("pretrain-rotate")    # one row per trial and epoch

Config columns are named by their gin binding (`BaseDataset.semisupervised`), including
the -p bindings; `gin_config` and `seed` are columns too. A trial resumed from a
checkpoint reports some epochs twice: the history keeps the last report of each.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pandas as pd

import paths

METRIC_PREFIXES = ("train_", "valid_", "test_")


def trial_dirs(exp_id: str) -> list[Path]:
    """Trial directories of an experiment: those holding a `result.json`."""
    exp_dir = paths.EXP_DIR / exp_id
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"no experiment '{exp_id}' in {paths.EXP_DIR}")
    return sorted(p.parent for p in exp_dir.glob("*/result.json"))


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


def _read_results(trial_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for line in (trial_dir / "result.json").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            row.pop("config", None)
            rows.append(row)
    return rows


def load_history(exp_id: str) -> pd.DataFrame:
    """One row per trial and epoch: config columns, then that epoch's metrics."""
    frames = []
    for trial_dir in trial_dirs(exp_id):
        rows = _read_results(trial_dir)
        if not rows:
            continue
        config = json.loads((trial_dir / "params.json").read_text())
        frame = pd.DataFrame(rows).drop_duplicates("training_iteration", keep="last")
        for key, value in config_columns(config).items():
            frame[key] = [value] * len(frame)
        frame["trial"] = trial_dir.name
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True).sort_values(["trial", "training_iteration"], ignore_index=True)


def load_experiment(exp_id: str) -> pd.DataFrame:
    """One row per trial: config columns, the last epoch's metrics and `best_accuracy`."""
    history = load_history(exp_id)
    if history.empty:
        return history
    last = history.groupby("trial", sort=True).tail(1).set_index("trial")
    last["best_accuracy"] = history.groupby("trial")["mean_accuracy"].max()
    return last.reset_index()
