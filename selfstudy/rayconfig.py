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
    resources_per_trial = None   # e.g. {"cpu": 4, "gpu": 1}; None = derived from the machine
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
    resources_per_trial: dict[str, float] | None = None


def available_ray_configs() -> list[str]:
    return sorted(p.stem for p in paths.CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"selfstudy_ray_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the user's module failed to import: say where
        raise UserError(f"Ray config {path} failed to load: {type(err).__name__}: {err}") from None
    return module


def load_ray_config(name: str) -> RayConfig:
    """The Ray config `name`: a module of `config/` (without .py) or a path to a .py file."""
    path = Path(name).expanduser()
    if path.suffix != ".py":
        path = paths.CONFIG_DIR / f"{name}.py"
    if not path.is_file():
        raise UserError(f"unknown Ray config '{name}': no {path}; choose from: {', '.join(available_ray_configs())}")
    module = _import(path)
    if not isinstance(getattr(module, "search_space", None), dict):
        raise UserError(f"Ray config {path} must define search_space = {{...}} (a dict; {{}} for a single run)")
    values = {f.name: getattr(module, f.name) for f in fields(RayConfig) if hasattr(module, f.name)}
    config = RayConfig(name=path.stem, **values)
    check_keys(config.search_space)
    counts = {"num_samples": 1, "checkpoint_frequency": 0, "keep_checkpoints": 1, "max_failures": 0,
              "max_concurrent_trials": 0}
    for name, least in counts.items():
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(f"Ray config {path}: {name} = {value!r} must be a whole number >= {least}")
    if config.mode not in ("max", "min"):
        raise UserError(f"Ray config {path}: mode = {config.mode!r} must be 'max' or 'min'")
    return config
