"""Load an experiment's trials into pandas; accuracy and utility of pretraining, as tables and plots.

    from util import vis
    df = vis.load_experiment("finetune")          # one row per trial
    hist = vis.load_history("finetune")           # one row per trial and epoch
    vis.summary(df)                               # accuracy and utility per (source, label budget)
    vis.calc_utility(df)                          # utility per (source, label budget), CI over seeds
    vis.accuracy_plot(df, "accuracy.png")         # returns the Figure; saves it when a path is given
    vis.utility_plot(df, "utility.png")

In a notebook started in any folder, `from util import vis` works after an editable install of the
checkout (`pip install --no-build-isolation -e .` there; it needs no network).

Config columns are named by their gin binding (`BaseDataset.semisupervised`), including
the -p bindings; `gin_config` and `seed` are columns too. Every trial has a row, also one
that failed before its first epoch: `status` is 'finished', 'stopped' (by a scheduler),
'errored' (`error` says why) or 'running' (not finished: `--resume` continues it). A trial
resumed from a checkpoint reports some epochs twice: the history keeps the last report of each.
`source` names what the trial's model started from: 'scratch', or the last path component of
`Wrapper.pretrained`; `stage` names the stage folder of a multi-stage study ('' for a trial
directly in the experiment folder).

Utility of pretraining (`calc_utility`, `summary`, `accuracy_plot`, `utility_plot`) lives in
`util.utility` and is re-exported here. For a study, pass one stage's trials:
`df[df["stage"] == "transfer"]`.
"""

from __future__ import annotations

from pathlib import Path


import pandas as pd

import paths
from selfstudy import folders
from selfstudy.config import config_columns  # noqa: F401  (re-exported)
from selfstudy.errors import UserError
from util.utility import (COMPLETED, PRETRAINED, SCRATCH, accuracy_plot, calc_utility, labels_needed,  # noqa: F401
                          source_label, summary, utility_per_seed, utility_plot)

__all__ = ["COMPLETED", "PRETRAINED", "SCRATCH", "accuracy_plot", "calc_utility", "config_columns", "experiment_dir",
           "labels_needed", "load_experiment", "load_history", "source_label", "summary", "trial_dirs",
           "utility_per_seed", "utility_plot"]
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
    with its config columns, `trial`, `stage`, `source`, `status` and `error`."""
    rows = [{k: v for k, v in row.items() if k != "config"} for row in folders.read_results(trial_dir)]
    frame = pd.DataFrame(rows).drop_duplicates("training_iteration", keep="last") if rows else pd.DataFrame([{}])
    config = config_columns(folders.read_params(trial_dir))
    for key, value in config.items():
        frame[key] = [value] * len(frame)
    status = folders.trial_status(trial_dir)
    frame["trial"], frame["status"], frame["error"] = trial_dir.name, status.state, status.error
    frame["stage"] = trial_dir.parent.name if trial_dir.parent != exp_dir else ""
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
    return history.sort_values(["stage", "trial", "training_iteration"], ignore_index=True,
                               key=lambda column: column.map(ran) if column.name == "stage" else column)


def load_experiment(exp: str | Path) -> pd.DataFrame:
    """One row per trial: `stage`, `trial`, config columns, `source`, the last epoch's metrics,
    `best_accuracy`, `status`, `error`. `exp` as in `load_history`."""
    history = load_history(exp)
    if history.empty:
        return history
    last = history.groupby(["stage", "trial"], sort=False).tail(1).set_index(["stage", "trial"])
    if "mean_accuracy" in history:
        last["best_accuracy"] = history.groupby(["stage", "trial"])["mean_accuracy"].max()
    return last.reset_index()


# --- utility of pretraining ------------------------------------------------------------------
