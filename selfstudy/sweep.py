"""Sweeps: a request's trial configs, checked, then run through Ray Tune or in this process (-l),
and continued after an interruption. An experiment is one sweep; a study (`selfstudy.study`)
runs one per stage.

Everything a user can get wrong is checked before anything is written: the gin files and
bindings of every variant of the sweep (the model is built on the meta device, the dataset files
are opened) and the resources each trial asks for.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import pickle
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import paths
from selfstudy import folders
from selfstudy.checkpoint import UnsafeSnapshot, load_snapshot
from selfstudy.cluster import cluster_resources, placement, start_ray, trial_resources
from selfstudy.config import DEFAULT_GIN_CONFIG, resolve_gin_file, split_binding
from selfstudy.durable import DiskFull, free_bytes, size_text
from selfstudy.errors import UserError
from selfstudy.local import run_local
from selfstudy.notes import note, print_notes
from selfstudy.ray_state import check_ray_state, put_back, rerun_command
from selfstudy.rayconfig import RayConfig, load_ray_config
from selfstudy.trials import check_trial


@dataclass
class Request:
    """What the user asked for on the command line."""

    exp_id: str = "default"
    ray_config: str = "single_run"
    gin_config: list[str] = field(default_factory=list)
    gin_params: list[str] = field(default_factory=list)
    local: bool = False
    address: str | None = None
    quiet: bool = False
    checkpoint_at_end: bool = False
    resume: bool = False
    status: bool = False


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def param_space(request: Request, ray_config: RayConfig) -> dict[str, Any]:
    """The Tune param_space: reserved keys from the CLI, then the sweep's keys."""
    if request.local and ray_config.workers_per_trial > 1:
        raise UserError(f"Ray config '{ray_config.name}' runs each trial as workers_per_trial = "
                        f"{ray_config.workers_per_trial} processes through Ray, which -l does not start: drop -l, or "
                        "set workers_per_trial = 1")
    bindings = dict(split_binding(text) for text in request.gin_params)
    swept = set(ray_config.search_space)
    clash = sorted(swept & set(bindings))
    if clash:
        raise UserError(f"{clash[0]} is swept by Ray config '{ray_config.name}' and bound by -p: drop one of them")
    if request.gin_config and "gin_config" in swept:
        raise UserError(f"Ray config '{ray_config.name}' sweeps gin_config: drop -g")
    for key in ("metric", "mode"):
        if key in swept:
            raise UserError(f"Ray config '{ray_config.name}' has '{key}' in its search_space: set {key} = ... at the "
                            "top of the module instead")
    names = request.gin_config or [DEFAULT_GIN_CONFIG]
    for name in names:
        resolve_gin_file(name)
    selection = {"metric": ray_config.metric, "mode": ray_config.mode}
    return {"gin_config": names, "gin_params": bindings, "seed": 0, **selection, **ray_config.search_space}


def expand(space: dict[str, Any], num_samples: int = 1) -> list[dict[str, Any]]:
    """Concrete trial configs of a param_space, as Tune's basic variant generator makes them."""
    from ray.tune.search.variant_generator import generate_variants

    return [spec["config"] for _ in range(num_samples) for _, spec in generate_variants({"config": space})]


def check_variants(variants: list[dict[str, Any]], kept: int = 1, workers: int = 1) -> None:
    """Raise the first `UserError` any distinct variant would meet at setup (with `workers`
    data-parallel workers each), or one for none at all; note when EXP_DIR has less room than
    `kept` checkpoints per trial (0: none) and one more."""
    if not variants:
        raise UserError("the search_space gives no trials: every tune.grid_search needs at least one value")
    seen: dict[str, int] = {}
    for config in variants:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in seen:
            seen[key] = check_trial(config, workers)
    # a new checkpoint is written whole before the oldest kept one goes: one more than kept
    needed = kept * sum(seen[json.dumps(c, sort_keys=True, default=str)] for c in variants) + max(seen.values())
    free = free_bytes(paths.EXP_DIR)
    if kept and free is not None and free < needed:
        note(f"{paths.EXP_DIR} has {size_text(free)} free, but {kept} checkpoint(s) of each of the {len(variants)} "
             f"trial(s), and one being written, take about {size_text(needed)}: the run may stop when the disk is "
             "full; free space or set SELFSTUDY_EXP_DIR to a bigger disk")
    print_notes()


def launch(request: Request, directory: Path, ray_config: RayConfig, space: dict[str, Any],
           variants: list[dict[str, Any]]) -> None:
    """Start the checked sweep `space` in `directory`: through Ray Tune, or in this process with -l."""
    record = {"ray_config": ray_config.name, "local": request.local, "checkpointing": checkpointing(ray_config),
              "gin_config": request.gin_config, "gin_params": request.gin_params, "trials": len(variants),
              "checkpoint_at_end": request.checkpoint_at_end,
              "typed_ray_config": str(Path(request.ray_config).resolve()) if request.ray_config.endswith(".py")
              else request.ray_config}
    if ray_config.search_alg is None:  # the trials Tune will make (a searcher draws its own)
        record["variants"] = variants
    if request.local:
        resources = trial_resources(ray_config)
        folders.write_json(directory / folders.EXPERIMENT_FILE, {**record, "resources": resources, "variants": variants})
        folders.mark_driver(request.exp_id)
        run_local(directory, variants, ray_config, resources, request.quiet)
        return
    from ray import tune

    start_ray(request.address, request.quiet)
    resources = trial_resources(ray_config, cluster=cluster_resources())
    tuner = tune.Tuner(
        tune.with_resources(_trainable(resources), placement(resources)),
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=ray_config.num_samples, **tune_selection(ray_config),
            scheduler=ray_config.scheduler, search_alg=ray_config.search_alg,
            max_concurrent_trials=ray_config.max_concurrent_trials or None,
            reuse_actors=ray_config.reuse_actors and ray_config.workers_per_trial == 1,  # peers are the trial's
            trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=directory.name, storage_path=str(directory.parent), verbose=0 if request.quiet else 1,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=ray_config.keep_checkpoints, checkpoint_frequency=ray_config.checkpoint_frequency,
                checkpoint_at_end=ray_config.checkpoint_at_end),
            failure_config=tune.FailureConfig(max_failures=ray_config.max_failures),
            callbacks=[_progress()(ray_config.metric, len(variants))]),
    )
    folders.write_json(directory / folders.EXPERIMENT_FILE, {**record, "resources": resources})
    folders.mark_driver(request.exp_id)
    fit(tuner, request.quiet)


def tune_selection(ray_config: RayConfig) -> dict[str, str | None]:
    """metric and mode for Tune, which refuses them when the scheduler was made with its own."""
    if getattr(ray_config.scheduler, "metric", None) is not None:
        return {"metric": None, "mode": None}
    return {"metric": ray_config.metric, "mode": ray_config.mode}


@contextlib.contextmanager
def tune_output(quiet: bool) -> Iterator[None]:
    """What Tune prints while it runs (its controller reads these settings when it starts; a
    user's own environment setting still counts):
    - never its warning that the experiment's state was snapshotted twice within 5 s (4 lines,
      after every trial's second checkpoint when epochs are short; a snapshot costs milliseconds);
    - with `quiet`, not each failed attempt's traceback, nor its list of incomplete trials, nor
      its banner (printed at every verbosity): the report after the run gives every failed trial
      a line, and the trial's error.txt keeps the tracebacks. Tune's other errors still print."""
    settings = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    if quiet:
        settings["TUNE_PRINT_ALL_TRIAL_ERRORS"] = "0"
    added = [name for name in settings if name not in os.environ]
    os.environ.update({name: settings[name] for name in added})
    summary = logging.getLogger("ray.tune.tune")
    listed = IncompleteTrials()
    if quiet:
        summary.addFilter(listed)
    try:
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            yield
    finally:
        for name in added:
            os.environ.pop(name, None)
        summary.removeFilter(listed)


class IncompleteTrials(logging.Filter):
    """Drops Tune's 'Trials did not complete: [...]', which the report after the run says better."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Trials did not complete")


def fit(tuner: Any, quiet: bool) -> None:
    """Run the Tuner, printing as `tune_output` says. On Ctrl-C, Tune stops the trials gracefully
    (saving their state) and returns; it then has put back the SIGINT handler it replaced, which
    tells an interrupted run from a complete one. After a complete run, trials a scheduler ended
    early are marked stopped."""
    before = signal.getsignal(signal.SIGINT)
    _progress().quiet = quiet  # a resumed sweep's callback was pickled with its first run
    _progress().disk_full = None
    with tune_output(quiet):
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:  # Tune's own SIGINT handler is off (TUNE_DISABLE_SIGINT_HANDLER)
            if _progress().disk_full:
                raise DiskFull(errno.ENOSPC, _progress().disk_full) from None
            raise
    tune_handled_sigint = not int(os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    interrupted = tune_handled_sigint and signal.getsignal(signal.SIGINT) is before
    signal.signal(signal.SIGINT, before)  # a later Ctrl-C interrupts the report, not a finished Tune run
    if interrupted and _progress().disk_full:
        raise DiskFull(errno.ENOSPC, _progress().disk_full)
    if interrupted:
        raise KeyboardInterrupt
    mark_stopped(grid)


def checkpointing(ray_config: RayConfig) -> dict[str, int | bool]:
    """The Ray config's checkpoint and retry settings, recorded so that --resume of -l needs no module."""
    return {"checkpoint_frequency": ray_config.checkpoint_frequency, "checkpoint_at_end": ray_config.checkpoint_at_end,
            "keep_checkpoints": ray_config.keep_checkpoints, "max_failures": ray_config.max_failures}


def resume_in(request: Request, directory: Path, record: dict[str, Any] | None) -> None:
    """Continue the sweep in `directory` (an experiment, or a stage of a study)."""
    from ray import tune

    check_unfinished(directory)
    if record and record.get("local"):
        folders.mark_driver(request.exp_id)
        ray_config = RayConfig(name=record["ray_config"], search_space={}, **record["checkpointing"])
        run_local(directory, record["variants"], ray_config, record["resources"], request.quiet)
        return
    if not tune.Tuner.can_restore(str(directory)):
        if not folders.trial_dirs(directory):
            raise UserError(f"experiment '{request.exp_id}' stopped before Ray Tune saved its state, so there is "
                            f"nothing to resume: delete {directory} and run it again")
        raise UserError(f"experiment '{request.exp_id}' has trials but no record of Ray Tune's ({directory / 'tuner.pkl'}"
                        f" is gone), so --resume cannot continue them; run the sweep again: "
                        f"`{rerun_command(request.exp_id)}`")
    copy = check_ray_state(directory, request.exp_id)
    start_ray(request.address, request.quiet)
    resources = record["resources"] if record else trial_resources(load_ray_config("single_run"),
                                                                   cluster=cluster_resources())
    try:
        tuner = tune.Tuner.restore(str(directory), trainable=tune.with_resources(_trainable(resources),
                                                                                  placement(resources)),
                                   resume_unfinished=True, resume_errored=True)
    except (pickle.UnpicklingError, EOFError) as err:  # a damaged tuner.pkl
        raise UserError(f"Ray Tune's record of experiment '{request.exp_id}' ({directory / 'tuner.pkl'}) is damaged "
                        f"({type(err).__name__}), so --resume cannot continue it; run the sweep again: "
                        f"`{rerun_command(request.exp_id)}`") from None
    if copy is not None:  # Tune reads its state when it runs
        put_back(copy, directory, request.exp_id)
        print_notes()
    folders.mark_driver(request.exp_id)
    fit(tuner, request.quiet)


def check_unfinished(directory: Path) -> None:
    """Before anything runs again: every unfinished trial's config still builds, and none of its
    checkpoints needs code to load (a planted snapshot is refused here, in one line). A damaged
    one is left to the trial: Ray never restores a copy it did not finish."""
    for trial_dir in folders.trial_dirs(directory):
        if folders.trial_status(trial_dir).state in ("finished", "stopped") or not folders.params_whole(trial_dir):
            continue  # a params.json that Ray's copy cut short is written again when the trial starts
        check_trial(folders.read_params(trial_dir))
        for checkpoint in folders.checkpoints(trial_dir):
            try:
                load_snapshot(checkpoint / folders.SNAPSHOT, f"--resume of {trial_dir.name}")
            except UnsafeSnapshot:
                raise
            except UserError:
                continue
    print_notes()


def _trainable(resources: dict[str, Any]) -> Any:
    from selfstudy.ray_trainable import RayTrial  # imports ray: only where Ray runs the trials

    workers = resources.get("workers", 1)
    return RayTrial if workers == 1 else type("RayTrial", (RayTrial,), {"workers": workers})


def _progress() -> Any:
    from selfstudy.ray_trainable import Progress  # imports ray

    return Progress


def mark_stopped(grid: Any) -> None:
    """After a complete run, no trial is unfinished: one a scheduler ended before its last epoch
    is complete, and one Tune ended as failed (e.g. after it failed to restore) has failed. Say
    so in their folders, where the status is read from (`folders.trial_status`)."""
    for trial in grid._experiment_analysis.trials:
        trial_dir = Path(trial.path) if trial.relative_logdir else None  # None: it never started
        if trial_dir is None or not (trial_dir / folders.PARAMS_FILE).exists():
            continue
        if folders.trial_status(trial_dir).state != "running":
            continue
        if trial.status == "TERMINATED":
            folders.write_json(trial_dir / folders.STOPPED_FILE, {"by": "the scheduler"})
        elif trial.status == "ERROR":
            error = Path(trial.error_file) if trial.error_file else None
            line = folders.error_line(error.read_text(errors="replace")) if error and error.is_file() else "failed"
            folders.write_error(trial_dir, f"Ray Tune ended the trial as failed after its last report: {line}")


