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
    trials_per_gpu = 1           # with derived resources: trials sharing one GPU, each with that share
                                 # of the GPU's CPUs (at least one: few CPUs limit the packing)
    reuse_actors = True          # a worker process runs the next trial itself (no process start)
    workers_per_trial = 1        # data-parallel workers of each trial (selfstudy.distributed)
    resources_per_worker = None  # with workers_per_trial > 1, e.g. {"cpu": 4, "gpu": 1}; None = 1 CPU (+ 1 GPU)
    placement_strategy = "PACK"  # of a trial's workers: "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"

A study module instead defines `stages`, a list of dicts run in order, each a Ray config of
its own (`name`, `search_space` and any of the settings above); settings at the top of the
module are every stage's defaults. A stage with `pretrained_from = "<earlier stage>"` also
sweeps `Wrapper.pretrained` over the snapshots of that stage's trials, and over None (from
scratch) unless `scratch = False`; see `selfstudy.study`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
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
    trials_per_gpu: int = 1
    reuse_actors: bool = True
    workers_per_trial: int = 1
    resources_per_worker: dict[str, float] | None = None
    placement_strategy: str = "PACK"

    @property
    def kept_checkpoints(self) -> int:
        """How many checkpoints a trial keeps on disk at most (0 when it makes none)."""
        return max(self.keep_checkpoints, 1) if self.checkpoint_frequency or self.checkpoint_at_end else 0


def available_ray_configs() -> list[str]:
    return sorted(p.stem for p in paths.CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


RENAMED_MODULES = {"ray.tune.suggest": "ray.tune.search"}  # Ray 0.8's module paths -> Ray 2.60's


class _RenamedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of Ray 0.8 module paths (in 2020 Ray configs) load their Ray 2.60 successors."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        for old, new in RENAMED_MODULES.items():
            if name == old or name.startswith(old + "."):
                successor = new + name[len(old):]
                print(f"note: {name} is {successor} in Ray 2.60: imported from there", file=sys.stderr)
                return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec: Any) -> ModuleType:
        old = next(o for o in RENAMED_MODULES if spec.name == o or spec.name.startswith(o + "."))
        successor = importlib.import_module(RENAMED_MODULES[old] + spec.name[len(old):])
        if spec.name != "ray.tune.suggest.hyperopt":
            return successor
        module = ModuleType(spec.name)  # the successor's names, HyperOptSearch taking Ray 0.8's keywords too
        module.__dict__.update({k: v for k, v in vars(successor).items() if not k.startswith("__")})
        module.HyperOptSearch = hyperopt_search_2020(successor.HyperOptSearch)
        return module

    def exec_module(self, module: ModuleType) -> None:
        pass


def hyperopt_search_2020(searcher: type) -> Any:
    """Ray 0.8's HyperOptSearch keywords on Ray 2.60's: `reward_attr` is the metric (maximised),
    `max_concurrent` a ConcurrencyLimiter around the searcher."""

    def HyperOptSearch(space: Any = None, metric: str | None = None, mode: str | None = None,  # noqa: N802
                       max_concurrent: int | None = None, reward_attr: str | None = None, **kwargs: Any) -> Any:
        if reward_attr is not None:
            metric, mode = metric or reward_attr, mode or "max"
        search = searcher(space, metric=metric, mode=mode, **kwargs)
        if max_concurrent:
            from ray.tune.search import ConcurrencyLimiter

            search = ConcurrencyLimiter(search, max_concurrent=max_concurrent)
        return search

    return HyperOptSearch


if not any(isinstance(finder, _RenamedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RenamedModules())  # first: else the old path loads a second copy of the module


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
    return ray_config_of(path, import_config(path))


def ray_config_of(path: Path, module: ModuleType) -> RayConfig:
    """The checked settings of Ray config module `module` (read from `path`)."""
    if hasattr(module, "stages"):
        raise UserError(f"{path} is a study (it defines stages): load it with selfstudy.study.load_study")
    values = {f.name: getattr(module, f.name) for f in fields(RayConfig) if hasattr(module, f.name)}
    if isinstance(getattr(module, "exp_args", None), dict):
        if "search_space" in values:
            raise UserError(f"Ray config {path} defines both search_space and a 2020 exp_args: keep one")
        values.update(from_exp_args(module.exp_args, path))
    return make_ray_config(path.stem, values, f"Ray config {path}")


# A 2020 Ray config's `exp_args` (tune.run's keywords) -> our settings; keywords whose job is done another way.
EXP_ARGS = {"config": "search_space", "num_samples": "num_samples", "checkpoint_freq": "checkpoint_frequency",
            "checkpoint_at_end": "checkpoint_at_end", "keep_checkpoints_num": "keep_checkpoints",
            "max_failures": "max_failures", "resources_per_trial": "resources_per_trial", "search_alg": "search_alg",
            "scheduler": "scheduler", "metric": "metric", "mode": "mode", "reuse_actors": "reuse_actors"}
EXP_ARGS_DONE_ELSEWHERE = {
    "stop": "a trial ends at the last of scheduler.milestones",
    "resume": "python main.py -e <exp> --resume continues an experiment",
    "verbose": "-q prints a line per trial that ended and the final results",
    "local_dir": "results go to EXP_DIR (SELFSTUDY_EXP_DIR)",
    "upload_dir": "results go to EXP_DIR (SELFSTUDY_EXP_DIR)",
    "name": "-e names the experiment",
    "trial_name_creator": "trials are named trial_<id>",
    "checkpoint_score_attr": "keep_checkpoints keeps the newest",
    "queue_trials": "trials wait for resources anyway",
    "sync_to_driver": "trials write to EXP_DIR directly",
    "global_checkpoint_period": "Ray Tune saves its state by itself",
    "ray_auto_init": "selfstudy starts Ray (or joins -a)",
    "return_trials": "results are read with util.vis",
}


def from_exp_args(exp_args: dict[str, Any], path: Path) -> dict[str, Any]:
    """The settings of a 2020 Ray config's `exp_args`; one note per keyword whose job is done another way."""
    values = {}
    for key, value in exp_args.items():
        if key in EXP_ARGS:
            values[EXP_ARGS[key]] = value
        elif key in EXP_ARGS_DONE_ELSEWHERE:
            print(f"note: {path.name}: exp_args['{key}'] is not used: {EXP_ARGS_DONE_ELSEWHERE[key]}", file=sys.stderr)
        else:
            known = ", ".join(sorted([*EXP_ARGS, *EXP_ARGS_DONE_ELSEWHERE]))
            raise UserError(f"Ray config {path}: exp_args['{key}'] is not a setting selfstudy knows; use one of {known}")
    values.setdefault("search_space", {})
    return values


def config_path(name: str) -> Path:
    """The file of Ray config (or study) `name`: a module of `config/` (without .py) or a path to a .py file."""
    path = Path(name).expanduser()
    if path.suffix != ".py":
        path = paths.CONFIG_DIR / f"{name}.py"
    if not path.is_file():
        raise UserError(f"unknown Ray config '{name}': no {path}; choose from: {', '.join(available_ray_configs())}")
    return path


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # of Ray's placement groups


def check_worker_resources(resources: Any, where: str) -> None:
    """`resources_per_worker`: None, or CPUs and whole GPUs of each worker of a trial."""
    if resources is None:
        return
    fix = 'give e.g. {"cpu": 4, "gpu": 1}'
    if not isinstance(resources, dict) or not resources or set(map(str.lower, map(str, resources))) - {"cpu", "gpu"}:
        raise UserError(f"{where}: resources_per_worker = {resources!r} must be a dict of 'cpu' and 'gpu': {fix}")
    for kind, amount in resources.items():
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount < 0:
            raise UserError(f"{where}: resources_per_worker[{kind!r}] = {amount!r} must be a number >= 0: {fix}")
        if kind.lower() == "gpu" and amount != int(amount):
            raise UserError(f"{where}: resources_per_worker['gpu'] = {amount!r}: each worker takes whole GPUs (NCCL "
                            "refuses two ranks on one GPU): give 1 or more, or 0")
    if not any(resources.values()):
        raise UserError(f"{where}: resources_per_worker = {resources!r} gives a worker nothing: {fix}")


def make_ray_config(name: str, values: dict[str, Any], where: str) -> RayConfig:
    """A checked `RayConfig` from a module's (or a study stage's) settings; `where` names it in errors."""
    if not isinstance(values.get("search_space"), dict):
        raise UserError(f"{where} must define search_space = {{...}} (a dict; {{}} for a single run), or a 2020 "
                        "exp_args = {'config': {...}, ...}")
    config = RayConfig(name=name, **values)
    check_keys(config.search_space)
    given = {key: (values[key], "the config") for key in ("metric", "mode") if key in values}
    for part in ("scheduler", "search_alg"):  # one made with its own metric (as 2020 configs did) decides it
        for key in ("metric", "mode"):
            value = getattr(getattr(config, part), key, None)
            if value is None:
                continue
            if key in given and given[key][0] != value:
                raise UserError(f"{where}: {key} is {given[key][0]!r} in {given[key][1]} but {value!r} in the {part}: "
                                "give it once, or the same in both")
            given[key] = (value, f"the {part}")
            setattr(config, key, value)
    counts = {"num_samples": 1, "checkpoint_frequency": 0, "keep_checkpoints": 1, "max_failures": 0,
              "max_concurrent_trials": 0, "trials_per_gpu": 1, "workers_per_trial": 1}
    for key, least in counts.items():
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(f"{where}: {key} = {value!r} must be a whole number >= {least}")
    if not isinstance(config.reuse_actors, bool):
        raise UserError(f"{where}: reuse_actors = {config.reuse_actors!r} must be True or False")
    check_worker_resources(config.resources_per_worker, where)
    if config.placement_strategy not in PLACEMENT_STRATEGIES:
        raise UserError(f"{where}: placement_strategy = {config.placement_strategy!r}; choose from: "
                        f"{', '.join(PLACEMENT_STRATEGIES)}")
    if config.mode not in ("max", "min"):
        raise UserError(f"{where}: mode = {config.mode!r} must be 'max' or 'min'")
    if not isinstance(config.metric, str) or not config.metric:
        raise UserError(f"{where}: metric = {config.metric!r} must name a reported metric, e.g. 'mean_accuracy'")
    if config.metric.startswith("test_"):  # the epoch would be picked by its test score: the test set leaks
        raise UserError(f"{where}: metric = {config.metric!r} would select epochs and trials on the test split: select "
                        "on a validation metric (e.g. 'valid_accuracy'; test_at_best then reports its test score)")
    return config
