"""`--status`: where an experiment stands, while it runs or after, without starting anything or
writing anything: the table of its trials (`selfstudy.report`), those not started yet
included, and whether the process that runs it (`folders.DRIVER_FILE`) is alive.

Trials not started yet (`results.started_later`) are the sweep's trials recorded in
experiment.json less those with a folder. A searcher's sweep (Optuna, ...) draws its trials
as it goes: only how many are to come is known.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd

from selfstudy import folders
from selfstudy.config import config_columns
from selfstudy.errors import UserError
from selfstudy.ray_state import check_ray_state
from selfstudy.report import resume_command, show
from selfstudy.results import started_later


def print_status(exp_id: str, record: dict[str, Any]) -> None:
    """Print the table of experiment `exp_id` (of each stage, for a study: `record` is its
    experiment.json), then one line on whether it runs and what is left."""
    directory = folders.exp_dir(exp_id)
    unfinished, stages_left, refusal = 0, 0, None
    for stage_dir in [directory / stage for stage in record.get("stages", [])] or [directory]:
        if not stage_dir.is_dir():
            print(f"stage '{stage_dir.name}' of study '{exp_id}': not started")
            stages_left += 1
            continue
        later = pd.DataFrame([{"trial": "-", "status": "pending", **config_columns(config)}
                              for config in started_later(stage_dir)])
        frame = show_while_written(stage_dir, later)
        left = len(later) + (frame.loc[frame["status"] == "running", "trial"].nunique() if len(frame) else 0)
        unfinished += left
        if left and stage_dir.name not in record.get("completed", []):
            refusal = refusal or resume_refusal(stage_dir, exp_id)
    left = f"{unfinished} trial(s)" + (f" and {stages_left} stage(s)" if stages_left else "")
    print(driver_line(exp_id, left, bool(unfinished or stages_left)) if not refusal or live_driver(exp_id) else
          f"not running: {left} not finished, but --resume refuses to continue: {refusal}")


def show_while_written(directory: Path, later: pd.DataFrame, tries: int = 5) -> pd.DataFrame:
    """`report.show`, again after a moment when a file it reads is being rewritten (Ray copies a
    running trial's params.json in place)."""
    for attempt in range(tries):
        try:
            return show(directory, later)[0]
        except UserError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def resume_refusal(directory: Path, exp_id: str) -> str | None:
    """Why --resume would refuse to continue the Ray sweep in `directory`, or None."""
    record = folders.read_experiment(directory) or {}
    if record.get("local") or not (directory / "tuner.pkl").is_file():
        return None
    try:
        check_ray_state(directory, exp_id)  # puts back nothing: --resume does that
    except UserError as err:
        return str(err)
    return None


def driver_line(exp_id: str, left: str, unfinished: bool) -> str:
    """Whether the experiment's driver runs, and what (`left`) has not finished."""
    driver = live_driver(exp_id)
    if driver:
        return f"running: driver pid {driver['pid']} on {driver['host']}, {left} not finished"
    recorded = read_driver(exp_id)
    if recorded.get("host") not in (None, socket.gethostname()):
        return (f"driver pid {recorded['pid']} on {recorded['host']}: whether it runs cannot be checked from here; "
                f"{left} not finished")
    if unfinished:
        return f"not running: {left} not finished; continue with `{resume_command(exp_id)}`"
    return "not running: every trial ended"


def read_driver(exp_id: str) -> dict[str, Any]:
    path = folders.exp_dir(exp_id) / folders.DRIVER_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


def live_driver(exp_id: str) -> dict[str, Any] | None:
    """The driver record of `exp_id` when that process still runs on this machine (the same
    process: its start time is compared, so a reused pid does not count)."""
    driver = read_driver(exp_id)
    if driver.get("host") != socket.gethostname() or not driver.get("pid"):
        return None
    started = folders.process_start(driver["pid"])
    if started is None or driver.get("started") is None:  # no /proc, or a record of an older version
        return driver if pid_alive(driver["pid"]) else None
    return driver if started == driver["started"] else None


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this machine (perhaps another one that reused the pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True
