"""Where a figure or table comes from: the commit of this checkout and of the trials, the study
module's sha256, the labels selection used and the date, as one line and as PNG metadata keys."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import pandas as pd

import paths
from selfstudy import folders
from selfstudy.errors import UserError
from selfstudy.rayconfig import config_path


def figure_output(output: str) -> Path:
    """The -o prefix of a figure script, checked before any work and made nothing of: its folder, or the
    nearest folder above it that exists, must be a folder this user can write in (`save_figures` makes the
    rest when the figures are drawn); a `UserError` naming it otherwise."""
    path = Path(output)
    existing = path.parent
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as err:
        raise UserError(f"-o {output}: cannot look into {existing} ({err.strerror}); give -o a path you can "
                        "write") from None
    if not existing.is_dir():
        raise UserError(f"-o {output}: cannot make the folder {path.parent} ({existing} is a file); give -o a path "
                        "you can write")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"-o {output}: cannot write in {existing}; give -o a path you can write")
    return path


def save_figures(figures: dict[Path, tuple[Any, dict[str, str]]]) -> None:
    """Write each matplotlib Figure, with its PNG metadata, to its path (folders made), all or none:
    each is drawn to a file beside its path first, then every one moved into place. A path that
    cannot be written is one `UserError` naming it; nothing of the figures is left behind."""
    drawn: dict[Path, Path] = {}
    path = next(iter(figures), None)
    try:
        for path, (figure, metadata) in figures.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            drawn[path] = path.with_name(f".{path.name}.tmp")
            figure.savefig(drawn[path], format="png", dpi=120, metadata=metadata)
        for path in drawn:  # the one place a move can fail where a draw beside it did not
            if path.is_dir():
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        for path, temporary in drawn.items():
            os.replace(temporary, path)
    except OSError as err:
        for temporary in drawn.values():
            temporary.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {err.strerror or err}; choose another -o") from None


def git_describe() -> str:
    """`git describe --always --dirty` of this checkout ('unknown' outside git)."""
    try:
        out = subprocess.run(["git", "-C", str(paths.ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(paths.ROOT)) if path.is_relative_to(paths.ROOT) else str(path)


def study_module(exp_dir: Path) -> str:
    """'study config/headline.py sha256 <hex>' from experiment.json: the hash recorded when the study started
    (a plain sweep records only its Ray config's name: that file is hashed now, and the line says so)."""
    record = folders.read_experiment(exp_dir) or {}
    if not record.get("ray_config"):
        return "study module not recorded"
    if "module_sha256" in record:
        path = Path(record["ray_config"])
        now = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        here = paths.CONFIG_DIR / path.name  # a study run from another checkout (a worktree since removed)
        if now is None and here.is_file() and hashlib.sha256(here.read_bytes()).hexdigest() == record["module_sha256"]:
            return f"study {shown(here)} sha256 {record['module_sha256']} (the same file ran from {path})"
        changed = "" if now == record["module_sha256"] else " (the file differs now)" if now else " (the file is gone)"
        return f"study {shown(path)} sha256 {record['module_sha256']}{changed}"
    try:
        path = config_path(record["ray_config"])
    except UserError:
        return f"Ray config {record['ray_config']} (its file is gone)"
    return f"Ray config {shown(path)} sha256 {hashlib.sha256(path.read_bytes()).hexdigest()} (hashed now)"


def trial_commits(stage_dir: Path) -> str:
    """The commits the stage's trials ran at (trial.json), shortened: 'trials at 7996507' ('not recorded')."""
    commits = []
    for trial_dir in folders.trial_dirs(stage_dir):
        path = trial_dir / "trial.json"
        commit = json.loads(path.read_text()).get("git_commit") if path.is_file() else None
        commits.append(commit[:7] + "-dirty" * commit.endswith("-dirty") if commit else "not recorded")
    return "trials at " + (", ".join(sorted(set(commits))) or "no commit")


def figure_provenance(script: str, argv: list[str], exp_dir: Path, stages: list[str], selection: str,
                      measure: str) -> dict[str, str]:
    """PNG metadata keys (`Commit`, `Trials`, `Study`, `Selection`, `Creation Time`) of a figure that
    `script` drew with `argv` from `stages` of the experiment in `exp_dir`; `Description` holds
    it all in one line, ending with `measure` (what the numbers are)."""
    command = shlex.join(["python", script, *argv])
    commits = sorted({trial_commits(exp_dir / stage) for stage in stages})
    facts = {"Commit": git_describe(), "Trials": "; ".join(commits), "Study": study_module(exp_dir),
             "Selection": selection, "Creation Time": date.today().isoformat()}
    named = ", ".join(f"'{stage}'" for stage in stages)
    facts["Description"] = (f"Drawn by `{command}` at commit {facts['Commit']} on {facts['Creation Time']} from "
                            f"stage{'s' * (len(stages) > 1)} {named} ({facts['Trials']}); {facts['Study']}; "
                            f"{selection}; {measure}.")
    return facts


def selection_labels(valid_labels: pd.Series) -> str:
    """What selection used, for a figure or table: 'selection: 20 to 1000 validation labels'
    ('... validation labels not recorded' where the trials do not report `valid_labels`)."""
    known = pd.to_numeric(pd.Series(valid_labels), errors="coerce").dropna()
    if known.empty:
        return "selection: validation labels not recorded"
    lo, hi = int(known.min()), int(known.max())
    return f"selection: {lo} validation labels" if lo == hi else f"selection: {lo} to {hi} validation labels"
