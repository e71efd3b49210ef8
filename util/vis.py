"""Load an experiment's trials into pandas; accuracy and utility of pretraining, as tables and plots.

    from util import vis
    df = vis.load_experiment("finetune")          # one row per trial (per head of a probe grid)
    hist = vis.load_history("finetune")           # one row per trial (head) and epoch
    vis.summary(df)                               # accuracy and utility per (source, label budget)
    vis.calc_utility(df)                          # utility per (source, label budget), t-interval over seeds
    vis.accuracy_plot(df, "accuracy.png")         # returns the Figure; saves it when a path is given
    vis.utility_plot(df, "utility.png")

In a notebook started in any folder, `from util import vis` works after an editable install of the
checkout (`pip install --no-build-isolation -e .` there; it needs no network).

Config columns are named by their gin binding (`BaseDataset.semisupervised`), including
the -p bindings; `gin_config` and `seed` are columns too. Every trial has a row, also one
that failed before its first epoch: `status` is 'finished', 'stopped' (by a scheduler),
'errored' (`error` says why) or 'running' (not finished: `--resume` continues it). A trial
resumed from a checkpoint reports some epochs twice: the history keeps the last report of each.
A probe grid trial (`selfstudy.probe`) has a row per head: its settings are in the columns of
the probe trial it stands for (`BaseDataset.semisupervised`, `optimizer.weight_decay`,
`scheduler.scale`), with `head` (its index; empty for other trials) and `peak_lr`; a head whose
loss diverged is 'diverged' (an outcome of its settings; `error` says when), not 'errored'.
`calc_utility`, `summary` and the plots take of each grid trial the best head per budget
(`best_heads`: by validation accuracy), so pass the rows as they come. `valid_labels`, where
the trials report it, is how many labelled validation images a trial picked its epoch with.
`source` names what the trial's model started from: 'scratch', or the last path component of
`Wrapper.pretrained`; `stage` names the stage folder of a multi-stage study ('' for a trial
directly in the experiment folder).

Utility of pretraining (`calc_utility`, `summary`) lives in `util.utility`, its plots
(`accuracy_plot`, `utility_plot`) in `util.plots`, both re-exported here. They read `test_at_best`
unless given `metric=` (and say so in one line when the trials have none). For a study, pass
one stage's trials: `df[df["stage"] == "transfer"]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

import paths
from selfstudy import folders
from selfstudy.config import config_columns  # noqa: F401  (re-exported)
from selfstudy.errors import UserError
from selfstudy.folders import DIVERGED
from util.plots import accuracy_plot, utility_plot  # noqa: F401
from util.utility import (COMPLETED, PRETRAINED, SCRATCH, TEST_METRIC, accuracy_per_seed, best_heads,  # noqa: F401
                          calc_utility, labels_needed, selection_labels, source_label, summary, utility_per_seed)

__all__ = ["COMPLETED", "DIVERGED", "PRETRAINED", "SCRATCH", "TEST_METRIC", "accuracy_per_seed", "accuracy_plot",
           "best_heads", "calc_utility", "config_columns", "experiment_dir", "labels_needed", "load_experiment", "load_history",
           "selection_labels", "source_label", "summary", "trial_dirs", "utility_per_seed", "utility_plot"]
METRIC_PREFIXES = ("train_", "valid_", "test_")


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
    with its config columns, `trial`, `stage`, `source`, `status` and `error`; a probe grid's,
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
    `best_accuracy`, `status`, `error`. `exp` as in `load_history`."""
    history = load_history(exp)
    if history.empty:
        return history
    keys = ["stage", "trial"] + ["head"] * ("head" in history)  # a probe grid's heads are rows of their own
    last = history.groupby(keys, sort=False, dropna=False).tail(1).set_index(keys)
    if "mean_accuracy" in history:
        last["best_accuracy"] = history.groupby(keys, dropna=False)["mean_accuracy"].max()
    return last.reset_index()


# --- utility of pretraining ------------------------------------------------------------------
