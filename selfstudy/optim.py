"""Optimizer and learning-rate schedule (`optimizer.*`, `scheduler.*` in gin).

The schedule is a pure function of the global training step: the learning rate moves
from `optimizer.lr` at epoch 0 through `scheduler.target_lrs[i]` at epoch
`scheduler.milestones[i]`, interpolated per iteration, and the run ends at the last
milestone. Each segment is linear for `exp_factor = 1`; for other values the fraction
`t` of a segment is replaced by `t ** exp_factor` (above 1 lingers near the segment's
start, below 1 moves away from it quickly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import gin
import torch

from selfstudy.errors import UserError

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
    params: Iterable[torch.nn.Parameter], optim_fn: str | type = "SGD", lr: float = 0.1, **kwargs: Any
) -> torch.optim.Optimizer:
    """`optim_fn(params, lr=lr, **kwargs)`, e.g. `optimizer.momentum = 0.9`, `optimizer.nesterov = True`."""
    cls = optimizer_class(optim_fn)
    try:
        return cls(params, lr=lr, **kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"optimizer {cls.__name__}: {err}; fix the optimizer.* bindings") from None


@dataclass(frozen=True)
class Schedule:
    """Piecewise schedule through (epoch, lr) points; `lr(step)` is pure."""

    base_lr: float
    milestones: tuple[int, ...]  # epochs
    target_lrs: tuple[float, ...]
    steps_per_epoch: int
    exp_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.milestones or len(self.milestones) != len(self.target_lrs):
            raise UserError(
                f"scheduler.milestones {list(self.milestones)} and scheduler.target_lrs "
                f"{list(self.target_lrs)} need the same, non-zero length (or one more learning rate, the first "
                "being the one at epoch 0, as in 2020 configs)"
            )
        if any(b <= a for a, b in zip((0,) + self.milestones, self.milestones)):
            raise UserError(f"scheduler.milestones {list(self.milestones)} must be positive and increasing epochs")
        if self.exp_factor <= 0:
            raise UserError(f"scheduler.exp_factor must be positive, got {self.exp_factor}")
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
                t = ((epoch - start_epoch) / (end_epoch - start_epoch)) ** self.exp_factor
                return start_lr + t * (end_lr - start_lr)
            start_epoch, start_lr = end_epoch, end_lr
        return self.target_lrs[-1]


@gin.configurable("scheduler", denylist=["base_lr", "steps_per_epoch"])
def build_schedule(
    base_lr: float,
    steps_per_epoch: int,
    milestones: list[int] = (5, 25),
    target_lrs: list[float] = (0.4, 0.0),
    exp_factor: float = 1.0,
    scale: float = 1.0,
) -> Schedule:
    """The schedule of `scheduler.{milestones (epochs), target_lrs, exp_factor, scale}`. A `target_lrs`
    one longer than `milestones` (the 2020 form) starts at its first entry instead of `optimizer.lr`. `scale`
    multiplies every learning rate of the schedule (`optimizer.lr` too): one number a
    hyperparameter search can tune."""
    if not scale > 0:
        raise UserError(f"scheduler.scale must be positive, got {scale}")
    if len(target_lrs) == len(milestones) + 1:  # the 2020 form: the first entry is the learning rate at epoch 0
        base_lr, target_lrs = target_lrs[0], target_lrs[1:]
    return Schedule(base_lr * scale, tuple(milestones), tuple(lr * scale for lr in target_lrs), steps_per_epoch,
                    exp_factor)
