"""The driver: a request from the command line -> an experiment run, or continued with --resume.

An experiment is one sweep (`selfstudy.sweep`) or a study of stages (`selfstudy.study`); its
name and state are checked before anything is written, and `selfstudy.report` says how it ended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import paths
from selfstudy import folders
from selfstudy.errors import UserError
from selfstudy.rayconfig import config_path, import_config, ray_config_of
from selfstudy.report import finish
from selfstudy.status import live_driver, print_status
from selfstudy.study import is_study, load_study, resume_study, run_study
from selfstudy.sweep import Request, check_variants, expand, launch, param_space, resume_in

__all__ = ["Request", "run"]


def run(request: Request) -> int:
    """Run (or resume) the experiment; returns the process exit code (see `finish`)."""
    if request.local and request.address:
        raise UserError(f"-a {request.address} joins a Ray cluster, but -l runs the trials in this process without "
                        "Ray: drop one of them")
    directory = folders.exp_dir(request.exp_id)
    if request.status:
        return status(request)
    folders.check_writable(paths.EXP_DIR, "SELFSTUDY_EXP_DIR")
    if request.resume:
        given = [flag for flag, value in (("-g", request.gin_config), ("-p", request.gin_params),
                                          ("-r", request.ray_config != Request.ray_config)) if value]
        if given:
            raise UserError(f"--resume continues '{request.exp_id}' with the settings it started with: drop "
                            f"{' and '.join(given)}")
        return resume(request, directory)
    if directory.exists() and any(directory.iterdir()):
        raise UserError(f"experiment '{request.exp_id}' already exists at {directory}: continue it with --resume, "
                        "name a new one with -e, or delete the folder")
    path = config_path(request.ray_config)
    module = import_config(path)
    if is_study(module):
        return run_study(request, load_study(path, module), directory)
    ray_config = ray_config_of(path, module)
    if request.checkpoint_at_end:
        ray_config.checkpoint_at_end = True
    space = param_space(request, ray_config)
    variants = expand(space, ray_config.num_samples)
    check_variants(variants, ray_config.kept_checkpoints, ray_config.workers_per_trial)
    launch(request, directory, ray_config, space, variants)
    return finish(directory, request.exp_id)


def status(request: Request) -> int:
    """--status: the table of experiment `request.exp_id` (each stage's, for a study), trials not
    started included, and whether its driver still runs; starts nothing, writes nothing."""
    directory = folders.existing_exp_dir(request.exp_id)
    print_status(request.exp_id, read_record(directory) or {})
    return 0


def read_record(directory: Path) -> dict[str, Any] | None:
    """experiment.json of `directory`; a damaged one is refused in one line."""
    try:
        return folders.read_experiment(directory)
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{directory / folders.EXPERIMENT_FILE} is damaged (not JSON), and it is the record "
                        "--resume and --status read; nothing can be continued without it: run the experiment again "
                        "under a new name") from None


def resume(request: Request, directory: Path) -> int:
    """Continue an interrupted experiment the way it was started; finished trials are not run again."""
    from ray import tune

    record = read_record(directory) if directory.is_dir() else None
    if record is None and not (directory.is_dir() and tune.Tuner.can_restore(str(directory))):
        raise UserError(f"nothing to resume: no experiment at {directory}; experiments in {paths.EXP_DIR}: "
                        f"{', '.join(folders.known_experiments()) or 'none'}")
    check_same_mode(request, record)
    driver = live_driver(request.exp_id)
    if driver:
        raise UserError(f"experiment '{request.exp_id}' is running (driver pid {driver['pid']}): a second --resume "
                        "would run its trials twice; wait for it to end (see --status), or stop it first")
    if record and "stages" in record:
        return resume_study(request, directory, record)
    resume_in(request, directory, record)
    return finish(directory, request.exp_id)


def check_same_mode(request: Request, record: dict[str, Any] | None) -> None:
    local = bool(record and record.get("local"))
    if request.local != local:
        how = "in this process (-l)" if local else "through Ray (without -l)"
        raise UserError(f"experiment '{request.exp_id}' ran {how}: --resume continues it the same way; "
                        f"{'add' if local else 'drop'} -l")
