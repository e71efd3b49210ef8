"""What an experiment (or a study's stage) ends with: a line per trial, each failure, an exit code."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import paths
from selfstudy import folders
from selfstudy.config import config_columns
from selfstudy.folders import DIVERGED
from selfstudy.results import load_experiment, load_history, started_later

EXIT_INTERRUPTED = 130
RUNS = "runs"  # links to the trial folders, named by their settings, for TensorBoard
HEAD_COLUMNS = ("head", "BaseDataset.semisupervised", "optimizer.weight_decay", "peak_lr")  # what tells heads apart


def finish(directory: Path, exp_id: str) -> int:
    """Print one line per trial of `directory` (an experiment, or a study's stage; a probe grid's:
    one per head) with its status, then each failure and each diverged head; the exit code says
    whether every trial completed (0; a diverged head of a finished grid does not count against
    it), some failed (1) or some have not finished (130: `--resume` of `exp_id` continues)."""
    frame, swept, notes = show(directory)
    errored = frame[frame["status"] == "errored"] if len(frame) else frame
    for (trial, error), rows in errored.groupby(["trial", "error"], sort=False, dropna=False):
        row = rows.iloc[0]  # a failed grid trial is every head's row: said once, by the trial's settings
        settings = ", ".join(f"{c}={row[c]}" for c in swept if len(rows) == 1 or c not in HEAD_COLUMNS)
        print(f"error: trial {trial}{f' ({settings})' if settings else ''} failed: {error}", file=sys.stderr)
    diverged = frame[frame["status"] == DIVERGED] if len(frame) else frame
    for _, row in diverged.iterrows():  # an outcome of the head's settings: the others went on
        settings = ", ".join(f"{c}={row[c]}" for c in swept)
        print(f"note: trial {row['trial']} ({settings}): {row['error']}", file=sys.stderr)
    for trial, (_, note) in notes.items():
        print(f"note: trial {trial}: {note}", file=sys.stderr)
    if len(frame):
        name_runs(directory, frame, swept)
    if len(frame) and (frame["status"] == "running").any():
        print(interrupted_hint(exp_id), file=sys.stderr)
        return EXIT_INTERRUPTED
    missing = len(started_later(directory))
    if missing:  # e.g. a searcher that stopped early: say so, though nothing failed
        print(f"note: {missing} of the sweep's {missing + trials_of(frame)} trials never started", file=sys.stderr)
    return 1 if len(errored) or not len(frame) else 0


def trials_of(frame: pd.DataFrame) -> int:
    return frame["trial"].nunique() if len(frame) else 0


def show(directory: Path, later: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str], dict]:
    """Print the header line and the table of `directory`'s trials (and of `later`: rows of trials
    not started yet, with their settings); returns the table's frame, the settings that differ
    between its rows, and the loss notes by trial (`loss_notes`)."""
    frame = load_experiment(directory)
    notes = loss_notes(load_history(directory)) if len(frame) else {}
    if notes:
        frame["note"] = frame["trial"].map(lambda trial: notes[trial][0] if trial in notes else "")
    heads = int(frame["head"].notna().sum()) if "head" in frame else 0  # rows of probe grid heads
    trials = frame["trial"].nunique() if len(frame) else 0
    later = later if later is not None else pd.DataFrame()
    if len(later):
        frame = pd.concat([frame, later], ignore_index=True)
    if "retries" in frame and not frame["retries"].fillna(0).astype(bool).any():
        frame = frame.drop(columns="retries")
    print(f"experiment {directory.relative_to(paths.EXP_DIR)}: {trials + len(later)} trial(s)"
          f"{f' ({len(later)} not started)' if len(later) else ''}{f' ({heads} probe heads)' if heads else ''} "
          f"in {directory}")
    shown = [c for c in ("status", "retries", "epoch", "train_accuracy", "valid_accuracy", "test_accuracy",
                         "best_accuracy", "best_epoch", "test_at_best", "note") if c in frame.columns]
    settings = {key for trial_dir in folders.trial_dirs(directory)
                for key in config_columns(folders.read_params(trial_dir))} | set(later.columns) | set(HEAD_COLUMNS)
    settings -= {"trial", "status"}
    swept = [c for c in frame.columns if c in settings and frame[c].map(shown_value).nunique() > 1]  # None counts
    if len(frame):
        table = frame[["trial"] + swept + shown].copy()
        for column in table:  # settings and counts that are whole numbers, also in a column with gaps
            if column in (*swept, "epoch", "best_epoch", "retries") and \
                    pd.api.types.is_float_dtype(table[column]) and table[column].dropna().map(float.is_integer).all():
                table[column] = table[column].map(shown_value)
        print(table.to_string(index=False, float_format=number, na_rep="-"))
    return frame[frame["trial"] != "-"] if len(frame) else frame, swept, notes


def name_runs(directory: Path, frame: pd.DataFrame, swept: list[str]) -> None:
    """`<directory>/runs/<settings>`: a link to each trial folder, named by the settings that set
    the trial apart (e.g. 'optimizer.lr=0.1'), so that `tensorboard --logdir <directory>/runs`
    names each run by them. Made afresh after each run; a file system without links goes without."""
    runs = directory / RUNS
    try:
        runs.mkdir(exist_ok=True)
        for old in runs.iterdir():
            if old.is_symlink():
                old.unlink()
        trials = frame.drop_duplicates("trial")
        grids = "head" in frame and frame["head"].notna().any()  # head settings differ within a trial
        swept = [c for c in swept if trials[c].map(shown_value).nunique() > 1 and not (grids and c in HEAD_COLUMNS)]
        taken: set[str] = set()
        for _, row in trials.iterrows():
            name = re.sub(r"[^\w.=,+-]", "_", ",".join(f"{c}={shown_value(row[c])}" for c in swept))[:folders.MAX_NAME]
            if not name or name in taken:
                name = f"{name},{row['trial']}" if name else row["trial"]
            taken.add(name)
            (runs / name).symlink_to(Path("..") / row["trial"], target_is_directory=True)
    except OSError:
        return


EXPLODED = 10.0  # a validation loss this many times its lowest, while the training loss fell, is noted


def loss_notes(history) -> dict[str, tuple[str, str]]:
    """A note (its table cell, its line) per trial (not probe heads) whose validation loss rose to EXPLODED times its
    lowest after that epoch while its training loss fell: the model overfits its few labels or
    its evaluation is unstable (e.g. BatchNorm statistics of tiny batches), so its late epochs
    say little and its selected epoch is an early one."""
    if not {"valid_loss", "train_loss"} <= set(history.columns):
        return {}
    if "head" in history:
        history = history[history["head"].isna()]
    notes = {}
    for trial, epochs in history.groupby("trial", sort=False):
        valid, train = epochs["valid_loss"].to_numpy(float), epochs["train_loss"].to_numpy(float)
        if len(valid) < 2 or not np.isfinite(valid).all() or not np.isfinite(train).all():
            continue
        lowest = int(np.argmin(valid))
        peak = lowest + int(np.argmax(valid[lowest:]))
        if valid[lowest] > 0 and valid[peak] >= EXPLODED * valid[lowest] and train[-1] < train[0]:
            line = (f"valid_loss rose to {number(valid[peak])} at epoch {peak + 1} from {number(valid[lowest])} at "
                    f"epoch {lowest + 1} while train_loss fell to {number(train[-1])}: it overfits its labels or "
                    "evaluates unstably; more labels, larger batches or fewer epochs help")
            notes[trial] = (f"valid_loss x{valid[peak] / valid[lowest]:.0f}", line)
    return notes


def shown_value(value: object) -> str:
    """A table cell's text for a setting: '-' for None or NaN (both mean unset), 50 for 50.0."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def number(value: float) -> str:
    """A metric in the table: 4 decimals, or 4 significant digits where decimals say little (1e+38)."""
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.4g}"


def interrupted_hint(exp_id: str) -> str:
    return f"interrupted; continue with `{resume_command(exp_id)}`"


def resume_command(exp_id: str) -> str:
    """The command that continues experiment `exp_id` the way it was started (with -l if it ran in-process)."""
    record = folders.read_experiment(folders.exp_dir(exp_id)) or {}
    return f"python main.py -e {exp_id} --resume{' -l' if record.get('local') else ''}"
