"""Probe grids: many linear heads on one frozen backbone, its features encoded once.

A linear probe trial (`Wrapper.finetune_classifier = False`) runs the frozen backbone over
every batch of every epoch. With `probe_grid.*` bound, the trial encodes its splits once,
keeps the features on the device and trains K linear heads on them together, one per point
of the grid lrs x weight_decays x budgets:

    probe_grid.lrs = [0.03, 0.1, 0.3]      # peak learning rates: the schedule scaled to each
    probe_grid.weight_decays = [0, 5e-4]   # optimizer.weight_decay of each head
    probe_grid.budgets = [100, 1000, 0]    # BaseDataset.semisupervised of each head (0: all images)
    probe_grid.views = 0                   # augmented views of each training image (0: plain)

Head k is the probe trial with that head's settings (`Head.bindings`), the same seed and
everything else alike: the same initial weights, batches, schedule and optimizer, so its
accuracy equals that trial's (on the CPU to 1e-5; heads train in float32). An axis left out
is the trial's own setting; a budget of 0 is every training image (recorded as their number).
Every epoch reports each head's metrics under `heads` (`heads/<k>/valid_accuracy` in
TensorBoard) and, at the top level, those of the head whose best epoch is best so far
(`best_head`: also the classifier of the trial's checkpoints); `util.vis` gives each head a row
of its own, with its settings as columns. A head whose loss diverges stops and reports why;
the others go on.

With `BaseDataset.max_images` the images are read a division at a time to be encoded, but the
features of the whole split fit: the heads' batches are drawn over all of it, not division by
division as the probe trial draws them (so in another order). The trial itself is
`selfstudy.probe_trial.GridTrial`, which also checks that a grid fits its trial (`check_grid`).

`views = V > 0` encodes V augmented views of each training image once (the trial's `augment.*`)
and trains epoch e on view (e - 1) mod V: cheaper than augmenting afresh every epoch, and
not the same as the probe trial, which does. The valid and test splits are never augmented
(a grid refuses `augment.do_augment` lists that name them). With `session.test_when = 'best'`
a head reports its test metrics once, after the last epoch, those of its best epoch, as the
probe trial does. A head that diverges is 'diverged' in `util.vis`: an outcome of its settings
(the others go on), not a failure of the trial.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

import gin
import numpy as np
import torch
import torch.nn.functional as F

from selfstudy.data import DatasetFiles
from selfstudy.data.base import DataOptions
from selfstudy.errors import UserError
from selfstudy.optim import PlateauSchedule, Schedule, build_optimizer, build_schedule
from selfstudy.selection import Selection
from selfstudy.tasks.classify import ClassifyTask


@dataclass(frozen=True)
class GridOptions:
    """`probe_grid.*`: the values of each axis (None: the trial's own setting) and the views."""

    lrs: tuple[float, ...] | None
    weight_decays: tuple[float, ...] | None
    budgets: tuple[int, ...] | None
    views: int


ALLOWED = {"lrs": (lambda v: v > 0, "learning rates must be positive"),
           "weight_decays": (lambda v: v >= 0, "use values of 0 or more"),
           "budgets": (lambda v: v == 0 or v >= 2, "use 0 (every image) or 2 or more images")}  # BatchNorm needs 2


def _axis(name: str, values: Any, integer: bool = False) -> tuple[Any, ...] | None:
    """One axis of the grid, checked: a non-empty list of distinct numbers."""
    if values is None:
        return None
    kind = "whole numbers of images (0: all)" if integer else "numbers"
    example = "[100, 1000, 0]" if integer else "[0.01, 0.1]"
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, int if integer else (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"probe_grid.{name} = {values!r} must be a non-empty list of {kind}, e.g. {example}")
    if len(set(values)) < len(values):
        raise UserError(f"probe_grid.{name} = {list(values)} repeats a value: give each once")
    allowed, fix = ALLOWED[name]
    bad = next((v for v in values if not allowed(v)), None)
    if bad is not None:
        raise UserError(f"probe_grid.{name} has {bad}: {fix}")
    return tuple(values)


@gin.configurable("probe_grid")
def grid_options(lrs: list[float] | None = None, weight_decays: list[float] | None = None,
                 budgets: list[int] | None = None, views: int = 0) -> GridOptions | None:
    """`probe_grid.*` (see the module's docstring); None when none is bound: an ordinary trial."""
    if not isinstance(views, int) or isinstance(views, bool) or views < 0:
        raise UserError(f"probe_grid.views = {views!r} must be 0 (plain images) or a number of augmented views")
    grid = GridOptions(_axis("lrs", lrs), _axis("weight_decays", weight_decays), _axis("budgets", budgets, True), views)
    return None if grid == GridOptions(None, None, None, 0) else grid


@dataclass(frozen=True)
class Head:
    """One linear head: the probe trial it stands for differs from the grid trial's config by
    `bindings()`. `scale` is that trial's scheduler.scale (None: the grid trial's own)."""

    budget: int | None  # labelled training images; None: all
    weight_decay: float | None  # None: the optimizer's setting
    peak_lr: float | None
    scale: float | None

    def bindings(self) -> dict[str, Any]:
        found: dict[str, Any] = {"BaseDataset.semisupervised": self.budget}
        if self.weight_decay is not None:
            found["optimizer.weight_decay"] = self.weight_decay
        if self.scale is not None:
            found["scheduler.scale"] = self.scale
        return found


def peak_lr(base_lr: float) -> float:
    """The highest learning rate of the trial's schedule at scheduler.scale = 1 (the rate it starts
    at for ReduceLROnPlateau)."""
    schedule = build_schedule(base_lr, 1, scale=1.0)
    return schedule.optimizer.param_groups[0]["lr"] if isinstance(schedule, PlateauSchedule) else max(
        schedule.base_lr, *schedule.target_lrs)


def grid_heads(grid: GridOptions, dataset: DatasetFiles, options: DataOptions) -> list[Head]:
    """The heads in order: budgets, then weight decays, then learning rates. A budget of 0 is
    every training image, recorded as their number (the same images: a class-balanced subset
    of all of them is all of them)."""
    if grid.budgets is not None and options.semisupervised:
        raise UserError(f"BaseDataset.semisupervised = {options.semisupervised} and probe_grid.budgets both set the "
                        "label budget: keep one of them")
    budgets: list[int | None] = [options.semisupervised]
    if grid.budgets is not None:
        total = len(dataset.split_rows(dataclasses.replace(options, semisupervised=None))["train"])
        budgets = [budget or total for budget in grid.budgets]
        above = next((budget for budget in budgets if budget > total), None)
        if above is not None:
            raise UserError(f"probe_grid.budgets has {above}, more than the {total} training images of "
                            f"{dataset.name}: lower it (0 = all of them)")
        if len(set(budgets)) < len(budgets):
            raise UserError(f"probe_grid.budgets = {list(grid.budgets)} asks for all {total} training images twice "
                            "(0 means all of them): give each budget once")
    scales: list[tuple[float | None, float | None]] = [(None, None)]
    if grid.lrs is not None:
        base_lr = build_optimizer([torch.zeros(1, requires_grad=True)]).defaults["lr"]
        peak = peak_lr(base_lr)
        if not peak > 0:
            plateau = isinstance(build_schedule(base_lr, 1), PlateauSchedule)
            raise UserError("probe_grid.lrs scales the schedule to each peak learning rate, but " + (
                "ReduceLROnPlateau starts at optimizer.lr = 0: set optimizer.lr to a positive rate" if plateau else
                "every rate of optimizer.lr and scheduler.target_lrs is 0: give the schedule a positive rate"))
        scales = [(lr, float(f"{lr / peak:.12g}")) for lr in grid.lrs]  # 0.3 / 0.2 -> 1.5, not 1.4999999999999998
    return [Head(budget, wd, lr, scale) for budget, wd, (lr, scale) in
            itertools.product(budgets, grid.weight_decays or [None], scales)]


def trial_grid() -> GridOptions | None:
    """The trial's grid (None: an ordinary trial). The configurable is called only when some
    probe_grid.* is bound, so an ordinary trial's operative config does not list the grid's settings."""
    for name in ("lrs", "weight_decays", "budgets", "views"):
        try:
            gin.query_parameter(f"probe_grid.{name}")
        except ValueError:  # gin's answer for a parameter no binding sets
            continue
        return grid_options()
    return None


def check_grid_task(task: Any) -> None:
    """A grid trains heads on each image's class; said before the task checks its own needs."""
    if trial_grid() is not None and (not isinstance(task, ClassifyTask) or task.is_pose):
        raise UserError(f"probe_grid.* trains linear heads on each image's class, but session.task is "
                        f"{type(task).__name__}{' with is_pose' if isinstance(task, ClassifyTask) else ''}: use "
                        "session.task = 'ClassifyTask' (without is_pose), or drop the probe_grid.* settings")


def budget_rows(dataset: DatasetFiles, options: DataOptions, budget: int | None) -> dict[str, np.ndarray]:
    """The training file's rows (train and valid) of a head's budget: those of the probe trial
    with that budget (its validation split is budget-sized with BaseDataset.valid_fraction)."""
    return dataset.split_rows(dataclasses.replace(options, semisupervised=budget))


class HeadState:
    """A head's parameters (float32), optimizer, schedule and selection: those of its probe trial."""

    def __init__(self, head: Head, classifier: torch.nn.Linear, steps_per_epoch: int, selection: Selection):
        self.head = head
        self.weight = classifier.weight.detach().clone().float().requires_grad_(True)  # C x D
        self.bias = classifier.bias.detach().clone().float().requires_grad_(True)  # C
        settings = {} if head.weight_decay is None else {"weight_decay": head.weight_decay}
        self.optimizer = build_optimizer([self.weight, self.bias], **settings)
        scale = {} if head.scale is None else {"scale": head.scale}
        self.schedule: Schedule | PlateauSchedule = build_schedule(self.optimizer.defaults["lr"], steps_per_epoch,
                                                                   self.optimizer, **scale)
        self.selection = selection
        self.best_accuracy = 0.0
        self.diverged = ""  # why it stopped, once it has

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.detach(), "bias": self.bias.detach(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "selection": self.selection.state_dict(),
                "best_accuracy": self.best_accuracy, "diverged": self.diverged}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"])
            self.bias.copy_(state["bias"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.selection.load_state_dict(state["selection"])
        self.best_accuracy, self.diverged = state["best_accuracy"], state.get("diverged", state.get("error", ""))


def heads_logits(features: torch.Tensor, states: list[HeadState]) -> torch.Tensor:
    """features B x D -> logits K x B x C of the heads `states`, in one batched product."""
    weights = torch.stack([state.weight for state in states])  # K x C x D
    biases = torch.stack([state.bias for state in states])  # K x C
    return torch.baddbmm(biases[:, None, :], features.expand(len(states), -1, -1), weights.transpose(1, 2))


def per_head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of each head: logits K x B x C, targets B -> K."""
    k, b, c = logits.shape
    return F.cross_entropy(logits.reshape(k * b, c), targets.repeat(k), reduction="none").view(k, b).mean(dim=1)
