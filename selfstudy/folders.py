"""The one owner of experiment and trial folders.

    EXP_DIR/<exp_id>/
        experiment.json              how the experiment was started (what --resume needs)
        driver.json                  the process (pid, host) that runs or last ran it (for --status)
        trial_<id>/
            params.json              the trial's config
            result.json              one JSON line per epoch
            trial.json               provenance: seed, git commit, device, threads, node, pid
            operative_config.gin     every gin value the trial used
            error.txt                why the trial failed, if it did (Ray's, or -l's)
            stopped.json             a scheduler (e.g. ASHA) ended it before its last epoch
            probe_grid.json          a probe grid's heads and the settings of each (selfstudy.probe)
            events.out.tfevents.*    the epochs' metrics for TensorBoard (Ray's logger, or -l's)
            checkpoint_NNNNNN/snapshot
        <name>/snapshot, snapshot.json   snapshots moved by misc/move_snapshots.py
    EXP_DIR/<study exp_id>/          a study (selfstudy.study): experiment.json, and one folder
        <stage>/                     per stage laid out as above (trial_*/, <name>/snapshot)

The driver, `-l`, the Ray Trainable, `util.vis` and `misc/move_snapshots.py` all find these
paths here. A trial's status is read from its files, so it is right after a crash too:
'finished' (its last epoch reported `done`), 'stopped' (ended early by a scheduler),
'errored' (it has an error.txt and did not finish) or 'running' (started, neither finished
nor failed: after an interruption, `python main.py -e <exp_id> --resume` continues it).
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paths
from selfstudy.durable import append_line, link_or_copy, nearest_existing, write_atomic
from selfstudy.errors import UserError

EXPERIMENT_FILE = "experiment.json"
DRIVER_FILE = "driver.json"
PARAMS_FILE = "params.json"
RESULTS_FILE = "result.json"
ERROR_FILE = "error.txt"
STOPPED_FILE = "stopped.json"
PROBE_GRID_FILE = "probe_grid.json"
SNAPSHOT = "snapshot"
CHECKPOINT_PREFIX = "checkpoint_"
MAX_NAME = 100  # characters of an experiment's name: folder names inside it add their own
_EXP_ID = re.compile(r"^\w[\w.+-]*$")  # no leading dot: '.', '..' and hidden folders are refused
_CHECKPOINT = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def check_exp_id(exp_id: str) -> str:
    """`exp_id` if it names a folder inside EXP_DIR (not '.', '..' or a path), else a `UserError`."""
    if not _EXP_ID.match(exp_id):
        raise UserError(f"experiment name {exp_id!r}: start with a letter or digit and use letters, digits and "
                        ". _ + - only")
    if len(exp_id) > MAX_NAME:
        raise UserError(f"experiment name {exp_id[:20]}... is {len(exp_id)} characters long: give at most {MAX_NAME} "
                        "(it names a folder, and the file system limits names)")
    return exp_id


def is_folder_name(name: str) -> bool:
    """A plain folder name: letters, digits and . _ + -, not starting with a dot."""
    return bool(_EXP_ID.match(name))


def exp_dir(exp_id: str) -> Path:
    """EXP_DIR/<exp_id>, after checking the name."""
    return paths.EXP_DIR / check_exp_id(exp_id)


def check_writable(directory: Path, variable: str) -> None:
    """Raise unless files can be written under `directory` (made later if missing); writes nothing that stays."""
    existing = nearest_existing(directory)
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"cannot write in {directory} ({err.strerror or err}): make it writable or set {variable} "
                        "to a writable folder") from None


def known_experiments() -> list[str]:
    """Names of the experiment folders in EXP_DIR, for error messages."""
    return sorted(p.name for p in paths.EXP_DIR.iterdir() if p.is_dir()) if paths.EXP_DIR.is_dir() else []


def existing_exp_dir(exp_id: str, flag: str = "-e") -> Path:
    """The folder of an experiment that must exist; a clear error listing the known ones if not."""
    directory = exp_dir(exp_id)
    if not directory.is_dir():
        raise UserError(f"no experiment '{exp_id}' in {paths.EXP_DIR}: check {flag}; experiments there: "
                        f"{', '.join(known_experiments()) or 'none'}")
    return directory


def trial_dirs(directory: Path) -> list[Path]:
    """The trial folders of an experiment folder (those holding a params.json), by name; for
    a study, those of every stage, stage by stage in the order they ran."""
    found = sorted(p.parent for p in directory.glob(f"*/{PARAMS_FILE}"))
    record = read_experiment(directory)
    for stage in (record or {}).get("stages", []):
        found += sorted(p.parent for p in (directory / stage).glob(f"*/{PARAMS_FILE}"))
    return found


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    write_atomic(path, json.dumps(value, indent=1, default=str))


def mark_driver(exp_id: str) -> None:
    """Record this process as the one running experiment `exp_id` (read by --status)."""
    write_json(exp_dir(exp_id) / DRIVER_FILE, {"pid": os.getpid(), "host": socket.gethostname(),
                                               "started": process_start(os.getpid())})


def process_start(pid: int) -> str | None:
    """When process `pid` started, as this boot's id and the clock ticks since boot (Linux's
    /proc), so that a later process with the same pid tells apart; None without /proc or process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}:{ticks}"


def read_params(trial_dir: Path) -> dict[str, Any]:
    """The trial's config (see `selfstudy.config`); a damaged file is a `UserError`."""
    path = trial_dir / PARAMS_FILE
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged (not JSON): it is the trial's config; put back a copy, or move the trial "
                        "folder out of the experiment") from None


def params_whole(trial_dir: Path) -> bool:
    """Whether the trial's params.json exists and reads (Ray writes it in place, so a full disk can cut it)."""
    try:
        read_params(trial_dir)
    except (OSError, UserError):
        return False
    return True


def read_probe_grid(trial_dir: Path) -> list[dict[str, Any]] | None:
    """A probe grid trial's heads (`head`, `bindings`, `peak_lr`), or None for another trial."""
    path = trial_dir / PROBE_GRID_FILE
    return json.loads(path.read_text())["heads"] if path.exists() else None


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """The trial's epoch reports, in order; a line cut short by a crash is left out."""
    path = trial_dir / RESULTS_FILE
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_results(trial_dir: Path, epoch: int) -> None:
    """Keep the reports of epochs up to `epoch` (a trial continuing from that epoch's checkpoint)."""
    kept = [row for row in read_results(trial_dir) if row.get("training_iteration", 0) <= epoch]
    write_atomic(trial_dir / RESULTS_FILE, "".join(json.dumps(row, default=str) + "\n" for row in kept))


def checkpoint_number(path: Path) -> int | None:
    """N of a `checkpoint_N` folder, None for any other name."""
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else None


def checkpoints(trial_dir: Path) -> list[Path]:
    """The trial's checkpoint folders holding a complete snapshot, oldest first. A folder whose
    snapshot was never finished (a crash during the write) holds only a temporary file: skipped."""
    found = [p for p in trial_dir.glob(f"{CHECKPOINT_PREFIX}*") if checkpoint_number(p) is not None]
    return sorted((p for p in found if (p / SNAPSHOT).is_file()), key=checkpoint_number)


def latest_snapshot(trial_dir: Path) -> Path | None:
    found = checkpoints(trial_dir)
    return found[-1] / SNAPSHOT if found else None


def next_checkpoint_dir(trial_dir: Path) -> Path:
    """A new checkpoint folder, numbered after every one the trial made so far (kept or not)."""
    numbers = [checkpoint_number(p) for p in trial_dir.glob(f"{CHECKPOINT_PREFIX}*")]
    return trial_dir / f"{CHECKPOINT_PREFIX}{max([n for n in numbers if n is not None], default=-1) + 1:06d}"


DIVERGED = "diverged"  # the status util.vis gives a probe grid head whose loss diverged (its trial went on)


@dataclass(frozen=True)
class TrialStatus:
    state: str  # 'finished', 'stopped', 'errored' or 'running'
    error: str | None  # the last line of the trial's error, when it errored
    retries: int = 0  # how often it was started again after a failure (from its last checkpoint)


def error_line(text: str) -> str:
    """The line of an error report that says what went wrong (Ray reports end with it)."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Failure #")]
    if not lines:
        return "failed (no message)"
    last = lines[-1]
    return re.sub(r"^(?:[\w.]+\.)?(\w+(?:Error|Exception|Interrupt)|DiskFull): ", r"\1: ", last)


def trial_status(trial_dir: Path) -> TrialStatus:
    """Where the trial stands, read from its files (see the module docstring)."""
    error, results_file = trial_dir / ERROR_FILE, trial_dir / RESULTS_FILE
    text = error.read_text(errors="replace") if error.is_file() else ""
    failures = sum(line.startswith("Failure #") for line in text.splitlines())
    results = read_results(trial_dir)
    if (trial_dir / STOPPED_FILE).is_file():
        return TrialStatus("stopped", None, failures)
    if results and results[-1].get("done"):  # Ray sets `done` on a scheduler's stop too; `completed` is ours
        return TrialStatus("finished" if results[-1].get("completed", True) else "stopped", None, failures)
    if not error.is_file():
        return TrialStatus("running", None, failures)
    if results_file.is_file() and results_file.stat().st_mtime_ns > error.stat().st_mtime_ns:
        return TrialStatus("running", None, failures)  # it reported an epoch since it failed: a retry is under way
    return TrialStatus("errored", error_line(text), max(failures - 1, 0))


def move_snapshot(source: Path, target: Path) -> None:
    """Put a trial's checkpoint `source` snapshot at `target`/snapshot, where `Wrapper.pretrained`
    finds it, as a hard link (or a copy), so the trial's own checkpoint stays whole;
    `snapshot.json` beside it records the trial, the checkpoint and the config. The record is
    written first: a record without its snapshot counts for nothing."""
    target.mkdir(parents=True, exist_ok=True)
    trial_dir = source.parent.parent
    record = {"trial": trial_dir.name, "checkpoint": source.parent.name, "config": read_params(trial_dir)}
    write_json(target / f"{SNAPSHOT}.json", record)
    link_or_copy(source, target / SNAPSHOT)


def moved_snapshots(directory: Path) -> dict[str, Path]:
    """Trial name -> the folder its snapshot was moved to, from the snapshot.json records under
    `directory` (a record whose move never finished has no snapshot beside it)."""
    moved = {}
    for record in directory.glob(f"**/{SNAPSHOT}.json"):
        if not (record.parent / SNAPSHOT).is_file():
            continue
        try:
            moved[json.loads(record.read_text())["trial"]] = record.parent
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return moved


def write_error(trial_dir: Path, text: str) -> None:
    """Append a failure report to the trial's error.txt, as Ray does."""
    append_line(trial_dir / ERROR_FILE, text)


def read_experiment(directory: Path) -> dict[str, Any] | None:
    """What experiment.json recorded when the experiment started (None for one without it)."""
    path = directory / EXPERIMENT_FILE
    return json.loads(path.read_text()) if path.is_file() else None
