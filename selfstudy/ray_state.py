"""Ray Tune's record of a sweep (`experiment_state-*.json`), checked before --resume hands it
to Tune, which would otherwise act on a damaged one without a word: start a trial of the
default config in place of the sweep's, or drop a trial whose folder is gone.

The check compares Tune's record with ours: every trial Tune lists that has reported an epoch
has its folder, and its config there (params.json) is the one Tune lists. A damaged record is
put back from the whole copy Tune keeps in its session folder while a run goes (when that copy
passes the same check), with a note; otherwise --resume refuses in one line that gives the
command to run the sweep again. Nothing is written before a refusal.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from selfstudy import folders
from selfstudy.durable import write_atomic
from selfstudy.errors import UserError
from selfstudy.notes import note

STATE_FILES = "experiment_state-*.json"
RAY_STATES = {"TERMINATED": "finished", "ERROR": "errored", "RUNNING": "running", "PAUSED": "paused",
              "PENDING": "pending"}
DAMAGE = (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError)  # JSONDecodeError: a ValueError


def ray_trials(state: Path) -> list[dict[str, Any]]:
    """The trials a state file lists, each as Tune recorded it (`relative_logdir`: its folder,
    None until it starts; `status`; `config`) and `reported`: whether it reported an epoch.
    A damaged file raises one of `DAMAGE`."""
    trials = []
    for entry, runtime in json.loads(state.read_text())["trial_data"]:
        trial, runtime = json.loads(entry), json.loads(runtime)
        if not isinstance(trial, dict) or not {"relative_logdir", "status", "config"} <= trial.keys() or \
                not isinstance(trial["status"], str) or not isinstance(trial["relative_logdir"], (str, type(None))) \
                or not isinstance(runtime, dict):
            raise ValueError("a trial without its folder, status or config")
        trials.append({**trial, "reported": bool(runtime.get("last_result"))})
    return trials


def check_trials(directory: Path, exp_id: str, state: Path, trials: list[dict[str, Any]]) -> None:
    """Raise the `UserError` for the first trial of `state` that --resume would drop or invent."""
    for trial in trials:
        if not trial["relative_logdir"]:
            continue  # not started: Tune starts it and makes its folder then
        trial_dir = directory / trial["relative_logdir"]
        listed = RAY_STATES.get(trial["status"], trial["status"].lower())
        if trial_dir.is_dir() and not folders.params_whole(trial_dir):
            continue  # Tune copies params.json in place: cut short, it is written again when the trial starts
        if not folders.params_whole(trial_dir):
            if not trial["reported"] and trial["status"] != "TERMINATED":
                continue  # nothing of it to lose: Tune starts it again from its beginning
            raise UserError(f"trial folder {trial_dir.name} of experiment '{exp_id}' is gone, but Ray Tune's state "
                            f"({state.name}) lists it as {listed}: "
                            f"--resume would drop it; put the folder back, or run the sweep again: "
                            f"`{rerun_command(exp_id)}`")
        recorded, tunes = (json.dumps(config, sort_keys=True, default=str)
                           for config in (folders.read_params(trial_dir), trial["config"]))
        if recorded != tunes:
            raise UserError(f"Ray Tune's state ({state.name}) gives trial {trial_dir.name} of experiment '{exp_id}' a "
                            f"config other than its {folders.PARAMS_FILE}: --resume would run a trial that is not the "
                            f"sweep's; run the sweep again: `{rerun_command(exp_id)}`")


def check_ray_state(directory: Path, exp_id: str) -> tuple[Path, bytes] | None:
    """Before Tune restores the sweep in `directory`: its newest state (the one Tune reads) is
    whole and agrees with our records; else the whole copy Tune kept of it that does, for
    `put_back` once nothing else refuses (and Tune reads the state); else a `UserError` that
    says how to go on."""
    states = sorted(directory.glob(STATE_FILES), key=lambda path: path.name)
    if not states:
        raise UserError(f"experiment '{exp_id}' has no state of Ray Tune's in {directory} (it stopped before Tune "
                        "saved one, or the file was removed), so --resume cannot continue its trials; their results "
                        f"stay readable; run the sweep again: `{rerun_command(exp_id)}`")
    newest = states[-1]
    try:
        trials = ray_trials(newest)
    except DAMAGE as err:
        copy, why = whole_copy(directory, exp_id, newest)
        if copy is None:
            raise UserError(why or f"Ray Tune's state of experiment '{exp_id}' ({newest.name}) is damaged "
                                   f"({type(err).__name__}), and Tune keeps no whole copy of it: --resume cannot tell "
                                   "the trials apart, so nothing was run; the trials' results stay readable; run the "
                                   f"sweep again: `{rerun_command(exp_id)}`") from None
        return copy, copy.read_bytes()  # read now: Ray may clean its sessions before the copy is put back
    check_trials(directory, exp_id, newest, trials)
    return None


def put_back(repair: tuple[Path, bytes], directory: Path, exp_id: str) -> None:
    """Write Tune's whole copy (its path, its bytes) over the damaged state of the same name, with a note."""
    copy, data = repair
    write_atomic(directory / copy.name, data)
    note(f"Ray Tune's state {copy.name} of '{exp_id}' was damaged; put back the whole copy Tune kept in {copy}")


def whole_copy(directory: Path, exp_id: str, state: Path) -> tuple[Path | None, str | None]:
    """The newest copy of `state` in Tune's session folders (Ray keeps one for each run in its
    temporary folder, until the machine cleans it) that is whole and agrees with our records,
    or None and why a whole copy does not agree (None when there is no whole copy)."""
    from ray._common.utils import get_default_ray_temp_dir  # Ray's own choice of folder

    root = Path(os.environ.get("RAY_TMPDIR") or get_default_ray_temp_dir())
    found = []
    for copy in root.glob(f"session_*/artifacts/*/{directory.name}/driver_artifacts/{state.name}"):
        try:  # session_latest is a link to the newest session, which the next ray.init replaces
            found.append((copy.stat().st_mtime, copy.resolve()))
        except OSError:  # Ray cleaned that session meanwhile
            continue
    why = None
    for _, copy in sorted(set(found), reverse=True):
        try:
            check_trials(directory, exp_id, copy, ray_trials(copy))
        except UserError as err:
            why = why or f"Ray Tune's state of experiment '{exp_id}' ({state.name}) is damaged, and {err}"
            continue
        except (*DAMAGE, OSError):
            continue
        return copy, None
    return None, why


def rerun_command(exp_id: str) -> str:
    """The command that runs experiment `exp_id` again from its start, under a new name."""
    record = folders.read_experiment(folders.exp_dir(exp_id)) or {}
    ray_config = record.get("typed_ray_config", record.get("ray_config", "single_run"))  # a study's is its path
    words = ["python", "main.py", "-e", f"{exp_id[:folders.MAX_NAME - 6]}-again", "-r", ray_config]
    if record.get("gin_config"):
        words += ["-g", *record["gin_config"]]
    if record.get("gin_params"):
        words += ["-p", *record["gin_params"]]
    at_end = record.get("checkpoint_at_end", record.get("checkpointing", {}).get("checkpoint_at_end"))
    words += ["-l"] * bool(record.get("local")) + ["-c"] * bool(at_end)
    return shlex.join(words)
