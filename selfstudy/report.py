"""What an experiment (or a study's stage) ends with: a line per trial, each failure, an exit code."""

from __future__ import annotations

import sys
from pathlib import Path

import paths
from selfstudy import folders

EXIT_INTERRUPTED = 130
HEAD_COLUMNS = ("head", "BaseDataset.semisupervised", "optimizer.weight_decay", "peak_lr")  # what tells heads apart


def finish(directory: Path, exp_id: str) -> int:
    """Print one line per trial of `directory` (an experiment, or a study's stage) with its status,
    then each failure; the exit code says whether every trial completed (0), some failed (1) or
    some have not finished (130: `--resume` of `exp_id` continues)."""
    from selfstudy.config import config_columns
    from util.vis import load_experiment

    frame = load_experiment(directory)
    heads = int(frame["head"].notna().sum()) if "head" in frame else 0  # rows of probe grid heads
    trials = frame["trial"].nunique() if len(frame) else 0
    print(f"experiment {directory.relative_to(paths.EXP_DIR)}: {trials} trial(s)"
          f"{f' ({heads} probe heads)' if heads else ''} in {directory}")
    shown = [c for c in ("status", "epoch", "train_accuracy", "valid_accuracy", "test_accuracy", "best_accuracy",
                         "best_epoch", "test_at_best") if c in frame.columns]
    settings = {key for trial_dir in folders.trial_dirs(directory)
                for key in config_columns(folders.read_params(trial_dir))} | set(HEAD_COLUMNS)
    swept = [c for c in frame.columns if c in settings and frame[c].astype(str).nunique() > 1]
    if len(frame):
        print(frame[["trial"] + swept + shown].to_string(index=False, float_format=lambda v: f"{v:.4f}",
                                                          na_rep="-"))
    errored = frame[frame["status"] == "errored"] if len(frame) else frame
    for _, row in errored.iterrows():
        settings = ", ".join(f"{c}={row[c]}" for c in swept)
        print(f"error: trial {row['trial']}{f' ({settings})' if settings else ''} failed: {row['error']}",
              file=sys.stderr)
    if len(frame) and (frame["status"] == "running").any():
        print(interrupted_hint(exp_id), file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if len(errored) or not len(frame) else 0


def interrupted_hint(exp_id: str) -> str:
    return f"interrupted; continue with `{resume_command(exp_id)}`"


def resume_command(exp_id: str) -> str:
    """The command that continues experiment `exp_id` the way it was started (with -l if it ran in-process)."""
    record = folders.read_experiment(folders.exp_dir(exp_id)) or {}
    return f"python main.py -e {exp_id} --resume{' -l' if record.get('local') else ''}"
