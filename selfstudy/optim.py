"""Optimizer and learning-rate schedule (`optimizer.*`, `scheduler.*` in gin).

The schedule is a pure function of the global training step: the learning rate moves
from `optimizer.lr` at epoch 0 through `scheduler.target_lrs[i]` at epoch
`scheduler.milestones[i]`, interpolated per iteration, and the run ends at the last
milestone. Each segment is linear; `exp_factor` (default 0) multiplies the
last segment by `e ** exp_factor`, where `e` falls linearly from 1 to 1e-7 across it (above 0
a faster decay at the end; below 0 a slower one).

`scheduler.scheduler_fn = 'ReduceLROnPlateau'` replaces the piecewise schedule: the rate
starts at `optimizer.lr` and torch's ReduceLROnPlateau lowers it after each epoch when
`scheduler.metric` (default valid_loss) stops improving; its own settings (factor, patience,
mode, ...) are `scheduler.*` bindings too. The run still ends at the last milestone.
(2020's forms of `target_lrs` and `final_lr` are translated by `selfstudy.translate2020`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import gin
import torch

from selfstudy.errors import UserError

DEFAULT_MILESTONES, DEFAULT_TARGET_LRS = (5, 25), (0.4, 0.0)  # epochs, and the learning rate at each
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    name: cls
    for name, cls in vars(torch.optim).items()
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer
}


def optimizer_class(optim_fn: str | type) -> type[torch.optim.Optimizer]:
    """The optimizer class named by `optimizer.optim_fn` (a torch.optim name or class)."""
    if isinstance(optim_fn, type) and issubclass(optim_fn, torch.optim.Optimizer):
        return optim_fn
    if optim_fn in OPTIMIZERS:
        return OPTIMIZERS[optim_fn]
    raise UserError(f"unknown optimizer.optim_fn {optim_fn!r}; choose from: {', '.join(sorted(OPTIMIZERS))}")


@gin.configurable("optimizer", denylist=["params"])
def build_optimizer(
    params: Iterable[torch.nn.Parameter], optim_fn: str | type = "SGD", lr: float = 0.1, decay_all: bool = True,
    **kwargs: Any
) -> torch.optim.Optimizer:
    """`optim_fn(params, lr=lr, **kwargs)`, e.g. `optimizer.momentum = 0.9`, `optimizer.nesterov = True`.
    `decay_all = False` keeps `weight_decay` off biases, normalisation gains and a ViT's tokens and
    position embeddings (parameters of one dimension, or 1 x N x D), as ViT recipes do."""
    cls = optimizer_class(optim_fn)
    if not decay_all:
        params = list(params)
        kept = [p for p in params if p.dim() <= 1 or (p.dim() == 3 and p.shape[0] == 1)]
        params = [group for group in ({"params": [p for p in params if not any(p is q for q in kept)]},
                                      {"params": kept, "weight_decay": 0.0}) if group["params"]] or params
    try:
        return cls(params, lr=lr, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"optimizer {cls.__name__}: {err}; fix the optimizer.* bindings") from None


@gin.configurable("gradients")
def gradient_clip(max_norm: float | None = None) -> float | None:
    """`gradients.max_norm`: clip the gradients' global L2 norm to this before each step, as
    DINO's and the ViT recipes do (None: no clipping)."""
    if max_norm is not None and not max_norm > 0:
        raise UserError(f"gradients.max_norm = {max_norm!r} must be positive; set it above 0, or None for no clipping")
    return max_norm


NO_PARAMETERS = "optimizer got an empty parameter list"  # torch's words


def check_optimizer(params: list[torch.nn.Parameter]) -> None:
    """Raise the `UserError` that `build_optimizer(params)` would meet, without building one: torch checks
    the settings (lr, momentum, ...) before it looks at the parameters, so an empty parameter list stops
    it right after them. (Setting up real parameters imports torch's compiler: 3 s before a run's checks.)
    No trainable parameter at all is refused as `build_optimizer` refuses it."""
    try:
        build_optimizer(params[:0])
    except UserError as err:
        if params and NO_PARAMETERS in str(err):
            return
        raise


def check_milestones(milestones: tuple[int, ...]) -> None:
    if not milestones or any(b <= a for a, b in zip((0,) + milestones, milestones)):
        raise UserError(f"scheduler.milestones {list(milestones)} must be positive and increasing epochs (the run "
                        "ends at the last)")


@dataclass(frozen=True)
class Schedule:
    """Piecewise schedule through (epoch, lr) points; `lr(step)` is pure."""

    base_lr: float
    milestones: tuple[int, ...]  # epochs
    target_lrs: tuple[float, ...]
    steps_per_epoch: int
    exp_factor: float = 0.0

    def __post_init__(self) -> None:
        if not self.milestones or len(self.milestones) != len(self.target_lrs):
            raise UserError(
                f"scheduler.milestones {list(self.milestones)} and scheduler.target_lrs "
                f"{list(self.target_lrs)} need the same, non-zero length: a learning rate for each milestone"
            )
        check_milestones(self.milestones)
        if self.steps_per_epoch < 1:
            raise UserError("an epoch has no training step: raise session.train_iters or give the dataset images")

    @property
    def num_epochs(self) -> int:
        return self.milestones[-1]

    def lr(self, step: int) -> float:
        """Learning rate for global training step `step` (0-based)."""
        epoch = step / self.steps_per_epoch
        start_epoch, start_lr = 0, self.base_lr
        for end_epoch, end_lr in zip(self.milestones, self.target_lrs):
            if epoch < end_epoch:
                t = (epoch - start_epoch) / (end_epoch - start_epoch)
                lr = start_lr + t * (end_lr - start_lr)
                if end_epoch == self.milestones[-1] and self.exp_factor:  # e over the segment's steps, 1 to 1e-7
                    steps = (end_epoch - start_epoch) * self.steps_per_epoch
                    done = step - start_epoch * self.steps_per_epoch
                    lr *= (1 - done / max(steps - 1, 1) * (1 - 1e-7)) ** self.exp_factor
                return lr
            start_epoch, start_lr = end_epoch, end_lr
        return self.target_lrs[-1] * (1e-7 ** self.exp_factor if self.exp_factor else 1.0)

    def observe(self, metrics: dict[str, Any]) -> None:
        """Called after each epoch; a piecewise schedule depends on the step alone."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PlateauSchedule:
    """`scheduler_fn = 'ReduceLROnPlateau'`: torch's scheduler on the optimizer, stepped once per
    epoch with `metric`; `lr(step)` is the rate it has set."""

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: tuple[int, ...], metric: str,
                 options: dict[str, Any]):
        try:
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **options)
        except (TypeError, ValueError) as err:
            raise UserError(f"scheduler.scheduler_fn = 'ReduceLROnPlateau': {err}; fix the scheduler.* bindings "
                            "(factor, patience, mode, threshold, cooldown, min_lr, eps)") from None
        check_milestones(tuple(milestones))
        if not isinstance(metric, str) or not metric.startswith(("train_", "valid_")):
            raise UserError(f"scheduler.metric = {metric!r} must name a train_* or valid_* metric, e.g. 'valid_loss' "
                            "(a test_* metric would tune the schedule on the test split)")
        self.optimizer, self.metric, self.num_epochs = optimizer, metric, milestones[-1]

    def lr(self, step: int) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def observe(self, metrics: dict[str, Any]) -> None:
        if self.metric not in metrics:
            raise UserError(f"scheduler.metric {self.metric!r} is not among this run's metrics ("
                            f"{', '.join(sorted(k for k in metrics if k.startswith(('train_', 'valid_'))))}): name "
                            "one of them")
        self.plateau.step(metrics[self.metric])

    def state_dict(self) -> dict[str, Any]:
        return self.plateau.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state)


SCHEDULERS = ("LambdaLR", "ReduceLROnPlateau")
PLATEAU_SETTINGS = {"mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps"}


@gin.configurable("scheduler", denylist=["base_lr", "steps_per_epoch", "optimizer"])
def build_schedule(
    base_lr: float,
    steps_per_epoch: int,
    optimizer: torch.optim.Optimizer | None = None,
    milestones: list[int] = DEFAULT_MILESTONES,
    target_lrs: list[float] = DEFAULT_TARGET_LRS,
    exp_factor: float = 0.0,
    scale: float = 1.0,
    scheduler_fn: str = "LambdaLR",
    metric: str = "valid_loss",
    **plateau: Any,
) -> Schedule | PlateauSchedule:
    """The schedule of `scheduler.{milestones (epochs), target_lrs, exp_factor, scale}`. `scale` multiplies every learning rate of the
    schedule (`optimizer.lr` too): one number a hyperparameter search can tune. `optimizer`:
    the one a ReduceLROnPlateau schedule drives (None: only check the settings)."""
    if not scale > 0:
        raise UserError(f"scheduler.scale must be positive, got {scale}")
    if scheduler_fn not in SCHEDULERS:
        raise UserError(f"unknown scheduler.scheduler_fn {scheduler_fn!r}; choose from: {', '.join(SCHEDULERS)}")
    unknown = sorted(set(plateau) - PLATEAU_SETTINGS)
    if unknown:
        raise UserError(f"unknown scheduler.{unknown[0]}; choose from: milestones, target_lrs, exp_factor, scale, "
                        f"scheduler_fn, metric, and with ReduceLROnPlateau {', '.join(sorted(PLATEAU_SETTINGS))}")
    if scheduler_fn == "ReduceLROnPlateau":
        if optimizer is None:
            optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
        for group in optimizer.param_groups:
            group["lr"] *= scale
        return PlateauSchedule(optimizer, tuple(milestones), metric, plateau)
    if plateau:
        raise UserError(f"scheduler.{sorted(plateau)[0]} is a ReduceLROnPlateau setting: set scheduler.scheduler_fn = "
                        "'ReduceLROnPlateau' or remove it")
    return Schedule(base_lr * scale, tuple(milestones), tuple(lr * scale for lr in target_lrs), steps_per_epoch,
                    exp_factor)
