"""Studies: ordered stages of Ray configs in one experiment, later stages starting from the
snapshots of earlier ones.

A study module of `config/` defines `stages`, a list of dicts, each one stage:

    stages = [
        {"name": "pretrain", "search_space": {"gin_config": tune.grid_search(["syn/r9/rotate", ...])}},
        {"name": "transfer", "pretrained_from": "pretrain", "search_space": {"seed": tune.grid_search([0, 1, 2]),
                                                                         "BaseDataset.semisupervised": ...}},
    ]

Every key of a Ray config (`search_space`, `num_samples`, `scheduler`, ...; see
`selfstudy.rayconfig`) is allowed in a stage; set at the top of the module, it is every
stage's default. `metric` and `mode` are the study's: stages may not disagree on them.
A stage with `pretrained_from = "<an earlier stage>"` also sweeps `Wrapper.pretrained`:
None (from scratch; leave it out with `scratch = False`) and the snapshot of each trial
of that stage. When a stage completes, its trials' final snapshots move to
`<stage>/<snapshot name>/snapshot`, the layout of `misc/move_snapshots.py`; the name is
`snapshot_name` (a format over `cfg`, the trial's config by binding name, e.g.
"{cfg[gin_config]}") or, by default, the values that differ between the stage's trials
("syn/r9/rotate" -> "rotate"). A later stage names them "<exp_id>/<stage>/<name>".

On disk (see `selfstudy.folders`): EXP_DIR/<exp_id>/experiment.json records the study and the
stages that completed; EXP_DIR/<exp_id>/<stage>/ is an experiment folder of its own.
`--resume` skips completed stages and continues the one that was running.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

from selfstudy import folders
from selfstudy.build import build_parts
from selfstudy.config import first_line
from selfstudy.errors import UserError
from selfstudy.publish import publish, published, snapshot_names
from selfstudy.rayconfig import RayConfig, import_config, make_ray_config
from selfstudy.report import finish, resume_command
from selfstudy.results import PRETRAINED
from selfstudy.sweep import Request, check_variants, expand, launch, param_space, resume_in

STAGE_KEYS = ("name", "pretrained_from", "scratch", "snapshot_name")


@dataclass
class Stage:
    config: RayConfig
    pretrained_from: str | None = None
    scratch: bool = True
    snapshot_name: str | None = None

    @property
    def name(self) -> str:
        return self.config.name


@dataclass
class Study:
    name: str
    path: Path
    stages: list[Stage]

    def sources(self) -> set[str]:
        """The stages whose snapshots a later stage starts from."""
        return {stage.pretrained_from for stage in self.stages if stage.pretrained_from}


def is_study(module: ModuleType) -> bool:
    return hasattr(module, "stages")


def load_study(path: Path, module: ModuleType) -> Study:
    """The checked stages of study module `module` (read from `path`)."""
    where = f"study {path}"
    entries = module.stages
    if not isinstance(entries, (list, tuple)) or not entries or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{where}: stages must be a non-empty list of dicts, e.g. "
                        "[{'name': 'pretrain', 'search_space': {...}}]")
    allowed = [f.name for f in fields(RayConfig) if f.name != "name"]
    defaults = {key: getattr(module, key) for key in allowed if hasattr(module, key)}
    shared_space = defaults.pop("search_space", {})
    if not isinstance(shared_space, dict):
        raise UserError(f"{where}: search_space at the top of a study must be a dict (every stage's defaults)")
    stages: list[Stage] = []
    for index, entry in enumerate(entries):
        name = entry.get("name")
        if not isinstance(name, str) or not folders.is_folder_name(name):
            raise UserError(f"{where}: stage {index + 1} needs a name of letters, digits and . _ + - "
                            f"(its folder), e.g. 'name': 'pretrain'; got {name!r}")
        here = f"{where}, stage '{name}'"
        if name in [stage.name for stage in stages]:
            raise UserError(f"{where}: two stages are named '{name}': give each stage its own name")
        unknown = sorted(set(entry) - set(allowed) - set(STAGE_KEYS))
        if unknown:
            raise UserError(f"{here}: unknown key '{unknown[0]}'; a stage takes {', '.join(STAGE_KEYS + tuple(allowed))}")
        values = {**copy.deepcopy(defaults), **{k: v for k, v in entry.items() if k in allowed}}  # a scheduler each
        if isinstance(values.get("search_space"), dict):
            values["search_space"] = {**shared_space, **values["search_space"]}
        config = make_ray_config(name, values, here)
        stage = Stage(config, entry.get("pretrained_from"), entry.get("scratch", True), entry.get("snapshot_name"))
        check_stage(stage, stages, here)
        stages.append(stage)
    first = stages[0].config
    for stage in stages[1:]:
        if (stage.config.metric, stage.config.mode) != (first.metric, first.mode):
            raise UserError(f"{where}: stage '{stage.name}' selects on {stage.config.metric} ({stage.config.mode}), "
                            f"stage '{stages[0].name}' on {first.metric} ({first.mode}): set metric and mode once, "
                            "at the top of the module")
    return Study(path.stem, path, stages)


def check_stage(stage: Stage, earlier: list[Stage], here: str) -> None:
    source = stage.pretrained_from
    if source is not None and source not in [s.name for s in earlier]:
        before = ", ".join(s.name for s in earlier) or "none"
        raise UserError(f"{here}: pretrained_from = {source!r} names no earlier stage (stages before it: {before}): "
                        "name one of them")
    if source is not None and PRETRAINED in stage.config.search_space:
        raise UserError(f"{here}: pretrained_from = {source!r} sweeps {PRETRAINED} itself: drop it from search_space")
    if not isinstance(stage.scratch, bool):
        raise UserError(f"{here}: scratch = {stage.scratch!r} must be True or False")
    if stage.snapshot_name is not None and not isinstance(stage.snapshot_name, str):
        raise UserError(f"{here}: snapshot_name = {stage.snapshot_name!r} must be a format string, "
                        "e.g. '{cfg[gin_config]}'")


def stage_space(request: Request, stage: Stage, sources: list[str] | None) -> dict[str, Any]:
    """The stage's Tune param_space; `sources`: the `Wrapper.pretrained` values of its source
    stage (None before that stage ran: the check then builds every trial from scratch)."""
    from ray import tune

    space = param_space(request, stage.config)
    if stage.pretrained_from:
        choices = ([None] if stage.scratch or sources is None else []) + (sources or [])
        if not choices:
            raise UserError(f"stage '{stage.name}' has scratch = False and stage '{stage.pretrained_from}' published no "
                            "snapshot: nothing to run")
        space[PRETRAINED] = tune.grid_search(choices)
    return space


def run_study(request: Request, study: Study, directory: Path) -> int:
    """Check every stage (the snapshots of earlier stages are not there yet: later stages are
    checked from scratch, and their snapshot names predicted), then run the stages in order."""
    variants_of: dict[str, list[dict[str, Any]]] = {}
    for stage in study.stages:
        if request.checkpoint_at_end:
            stage.config.checkpoint_at_end = True
        space = stage_space(request, stage, None)
        variants = variants_of[stage.name] = expand(space, stage.config.num_samples)
        try:
            check_variants(variants, stage.config.kept_checkpoints, stage.config.workers_per_trial)
        except UserError as err:
            raise UserError(f"study {study.path.name}, stage '{stage.name}': {first_line(err)}") from None
        if stage.pretrained_from:
            check_backbones(stage, variants_of[stage.pretrained_from], variants)
        if stage.name in study.sources() or stage.snapshot_name:
            snapshot_names(stage.name, stage.snapshot_name, variants)
        if stage.name in study.sources() and not stage.config.checkpoint_at_end:
            raise UserError(f"study {study.path}: stage '{stage.name}' feeds a later stage, so its trials must "
                            "checkpoint at their end: set checkpoint_at_end = True")
    record = {"ray_config": str(study.path), "study": study.name, "module_sha256": module_hash(study.path),
              "local": request.local, "gin_config": request.gin_config, "gin_params": request.gin_params,
              "checkpoint_at_end": request.checkpoint_at_end,
              "stages": [stage.name for stage in study.stages], "completed": []}
    folders.write_json(directory / folders.EXPERIMENT_FILE, record)
    return run_stages(request, study, directory, record)


def backbone_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The backbone's layer shapes that `config` builds (on the meta device: no memory, no data)."""
    import torch

    model = build_parts(config, torch.device("meta")).model
    return {name: tuple(value.shape) for name, value in model.state_dict().items() if name.startswith("backbone.")}


def check_backbones(stage: Stage, sources: list[dict[str, Any]], variants: list[dict[str, Any]]) -> None:
    """Every trial of `stage` builds the backbone its source stage's trials train: else its pretrained
    trials would all fail, after the source stage ran."""
    wanted = backbone_shapes(sources[0])
    for config in sources[1:2] + variants:
        shapes = backbone_shapes(config)
        for name in dict.fromkeys([*wanted, *shapes]):  # in the model's order: the first layer that differs
            if wanted.get(name) != shapes.get(name):
                raise UserError(f"stage '{stage.name}' builds backbone layer {name} as {shapes.get(name)}, but stage "
                                f"'{stage.pretrained_from}' trains it as {wanted.get(name)}: give both stages the same "
                                "backbone settings (init_resnet.choice, ResNet.*)")


def resume_study(request: Request, directory: Path, record: dict[str, Any]) -> int:
    """Continue a study: completed stages are skipped, the one that stopped continues."""
    path = Path(record["ray_config"])
    if not path.is_file():
        raise UserError(f"--resume of study '{request.exp_id}' needs its module {path}, which is gone: put it back")
    if module_hash(path) != record.get("module_sha256", module_hash(path)):
        raise UserError(f"study {path} changed since '{request.exp_id}' started: put it back as it was, or start a new "
                        "experiment with -e")
    study = load_study(path, import_config(path))
    request = dataclasses.replace(request, gin_config=record.get("gin_config", []),
                                  gin_params=record.get("gin_params", []),
                                  checkpoint_at_end=record.get("checkpoint_at_end", False))
    for stage in study.stages:
        stage.config.checkpoint_at_end |= request.checkpoint_at_end
    return run_stages(request, study, directory, record)


def module_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_stages(request: Request, study: Study, directory: Path, record: dict[str, Any]) -> int:
    """Run every stage not yet completed, in order; stop at the first that does not complete."""
    for stage in study.stages:
        if stage.name in record["completed"]:
            print(f"stage '{stage.name}' of study '{request.exp_id}' completed earlier: not run again")
            continue
        stage_dir = directory / stage.name
        stage_record = folders.read_experiment(stage_dir) if stage_dir.is_dir() else None
        if stage_record is not None and not stage_record.get("local") and not _restorable(stage_dir):
            if any(folders.read_results(t) for t in folders.trial_dirs(stage_dir)):
                raise UserError(f"stage '{stage.name}' stopped before Ray Tune saved its state, so it cannot continue; "
                                f"its trials' results are in {stage_dir}: move them away or delete the folder, then "
                                "--resume runs the stage again")
            shutil.rmtree(stage_dir)  # stopped before any trial reported: nothing of it to keep
            stage_record = None
        if stage_record is not None:
            resume_in(request, stage_dir, stage_record)
        else:
            sources = published(request.exp_id, directory / stage.pretrained_from) if stage.pretrained_from else None
            space = stage_space(request, stage, sources)
            variants = expand(space, stage.config.num_samples)
            check_variants(variants, stage.config.kept_checkpoints, stage.config.workers_per_trial)
            launch(request, stage_dir, stage.config, space, variants)
        code = finish(stage_dir, request.exp_id)
        if code:
            if code == 1:
                print(f"stage '{stage.name}' of study '{request.exp_id}' did not complete, so later stages have not "
                      f"run: fix the failures, then `{resume_command(request.exp_id)}` reruns them",
                      file=sys.stderr)
            return code
        if stage.name in study.sources():
            publish(stage.name, stage.snapshot_name, stage_dir)
        record["completed"].append(stage.name)
        folders.write_json(directory / folders.EXPERIMENT_FILE, record)
    return 0


def _restorable(stage_dir: Path) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(str(stage_dir))
