"""Ray configs: Python modules in `config/` that describe a sweep.

A Ray config module defines `search_space`, a dict from gin binding names (or the
reserved keys `gin_config` and `seed`) to values or Ray Tune search spaces, and may set:

    num_samples = 1              # samples of the search space (grid points repeat per sample)
    checkpoint_frequency = 1     # epochs between checkpoints; 0 = none during training
    checkpoint_at_end = True     # a checkpoint when a trial finishes (what move_snapshots moves)
    keep_checkpoints = 2         # newest checkpoints kept per trial
    max_failures = 2             # retries of a trial that failed, each from its last checkpoint
    max_concurrent_trials = 0    # 0 = as many as the resources allow
    metric, mode = "mean_accuracy", "max"   # what schedulers and searchers optimise
    scheduler = None             # a ray.tune scheduler, e.g. ASHAScheduler()
    search_alg = None            # a ray.tune.search searcher, e.g. OptunaSearch() (-l samples at random)
    resources_per_trial = None   # e.g. {"cpu": 4, "gpu": 1}; None = derived from the machine

A study module instead defines `stages`, a list of dicts run in order, each a Ray config of
its own (`name`, `search_space` and any of the settings above); settings at the top of the
module are every stage's defaults. A stage with `pretrained_from = "<earlier stage>"` also
sweeps `Wrapper.pretrained` over the snapshots of that stage's trials, and over None (from
scratch) unless `scratch = False`; see `selfstudy.study`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import paths
from selfstudy.config import check_keys
from selfstudy.errors import UserError


@dataclass
class RayConfig:
    name: str
    search_space: dict[str, Any]
    num_samples: int = 1
    checkpoint_frequency: int = 1
    checkpoint_at_end: bool = True
    keep_checkpoints: int = 2
    max_failures: int = 2
    max_concurrent_trials: int = 0
    metric: str = "mean_accuracy"
    mode: str = "max"
    scheduler: Any = None
    search_alg: Any = None
    resources_per_trial: dict[str, float] | None = None


def available_ray_configs() -> list[str]:
    return sorted(p.stem for p in paths.CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def import_config(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"selfstudy_ray_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's module failed to import: say where
        raise UserError(f"Ray config {path} failed to load: {type(err).__name__}: {err}") from None
    return module


def load_ray_config(name: str) -> RayConfig:
    """The Ray config `name`: a module of `config/` (without .py) or a path to a .py file."""
    path = config_path(name)
    module = import_config(path)
    if hasattr(module, "stages"):
        raise UserError(f"{path} is a study (it defines stages): load it with selfstudy.study.load_study")
    values = {f.name: getattr(module, f.name) for f in fields(RayConfig) if hasattr(module, f.name)}
    return make_ray_config(path.stem, values, f"Ray config {path}")


def config_path(name: str) -> Path:
    """The file of Ray config (or study) `name`: a module of `config/` (without .py) or a path to a .py file."""
    path = Path(name).expanduser()
    if path.suffix != ".py":
        path = paths.CONFIG_DIR / f"{name}.py"
    if not path.is_file():
        raise UserError(f"unknown Ray config '{name}': no {path}; choose from: {', '.join(available_ray_configs())}")
    return path


def make_ray_config(name: str, values: dict[str, Any], where: str) -> RayConfig:
    """A checked `RayConfig` from a module's (or a study stage's) settings; `where` names it in errors."""
    if not isinstance(values.get("search_space"), dict):
        raise UserError(f"{where} must define search_space = {{...}} (a dict; {{}} for a single run)")
    config = RayConfig(name=name, **values)
    check_keys(config.search_space)
    counts = {"num_samples": 1, "checkpoint_frequency": 0, "keep_checkpoints": 1, "max_failures": 0,
              "max_concurrent_trials": 0}
    for key, least in counts.items():
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(f"{where}: {key} = {value!r} must be a whole number >= {least}")
    if config.mode not in ("max", "min"):
        raise UserError(f"{where}: mode = {config.mode!r} must be 'max' or 'min'")
    if not isinstance(config.metric, str) or not config.metric:
        raise UserError(f"{where}: metric = {config.metric!r} must name a reported metric, e.g. 'mean_accuracy'")
    if config.metric.startswith("test_"):  # the epoch would be picked by its test score: the test set leaks
        raise UserError(f"{where}: metric = {config.metric!r} would select epochs and trials on the test split: select "
                        "on a validation metric (e.g. 'valid_accuracy'; test_at_best then reports its test score)")
    return config
