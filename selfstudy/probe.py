"""Probe grids: many linear heads on one frozen backbone, its features encoded once.

A linear probe trial (`Wrapper.finetune_classifier = False`) runs the frozen backbone over
every batch of every epoch. With `probe_grid.*` bound, the trial encodes its splits once,
keeps the features on the device and trains K linear heads on them together, one per point
of the grid lrs x weight_decays x budgets:

    probe_grid.lrs = [0.03, 0.1, 0.3]      # peak learning rates: the schedule scaled to each
    probe_grid.weight_decays = [0, 5e-4]   # optimizer.weight_decay of each head
    probe_grid.budgets = [100, 1000, 0]    # BaseDataset.semisupervised of each head (0: all)
    probe_grid.views = 0                   # augmented views of each training image (0: plain)

Head k is the probe trial with that head's settings (`Head.bindings`), the same seed and
everything else alike: the same initial weights, batches, schedule and optimizer, so its
accuracy equals that trial's (on the CPU to 1e-5; heads train in float32). An axis left out
is the trial's own setting. Every epoch reports each head's metrics under `heads` (`heads/<k>/
valid_accuracy` in TensorBoard) and, at the top level, those of the epoch's best head
(`best_head`); `util.vis` gives each head a row of its own, with its settings as columns.
A head whose loss diverges stops and reports why; the others go on.

With `BaseDataset.max_images` the images are read a division at a time to be encoded, but the
features of the whole split fit: the heads' batches are drawn over all of it, not division by
division as the probe trial draws them (the same images per epoch, in another order).

`views = V > 0` encodes V augmented views of each training image once (the trial's `augment.*`)
and trains epoch e on view (e - 1) mod V: cheaper than augmenting afresh every epoch, and
not the same as the probe trial, which does. The valid and test splits are never augmented.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gin
import numpy as np
import torch
import torch.nn.functional as F

from selfstudy import legacy
from selfstudy.data import DatasetFiles, ResidentSplit, DividedSplit
from selfstudy.data.base import DataOptions
from selfstudy.data.splits import num_batches
from selfstudy.errors import UserError
from selfstudy.folders import PROBE_GRID_FILE, write_json
from selfstudy.optim import PlateauSchedule, Schedule, build_optimizer, build_schedule
from selfstudy.selection import Selection
from selfstudy.trial import Parts, Trial

EVAL_CHUNK = 4096  # feature rows per evaluation pass of all heads


@dataclass(frozen=True)
class GridOptions:
    lrs: tuple[float, ...] | None
    weight_decays: tuple[float, ...] | None
    budgets: tuple[int, ...] | None
    views: int


def _axis(name: str, values: Any, integer: bool = False) -> tuple[Any, ...] | None:
    if values is None:
        return None
    kind = "whole numbers of images (0: all)" if integer else "numbers"
    if not isinstance(values, (list, tuple)) or not values or not all(
            isinstance(v, int if integer else (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"probe_grid.{name} = {values!r} must be a non-empty list of {kind}, e.g. "
                        f"{'[100, 1000, 0]' if integer else '[0.01, 0.1]'}")
    if len(set(values)) < len(values):
        raise UserError(f"probe_grid.{name} = {list(values)} repeats a value: give each once")
    negative = next((v for v in values if v < 0 or (name == "lrs" and v == 0)), None)
    if negative is not None:
        raise UserError(f"probe_grid.{name} has {negative}: {'learning rates must be positive' if name == 'lrs' else 'use values of 0 or more'}")
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


def grid_heads(grid: GridOptions, options: DataOptions) -> list[Head]:
    """The heads in order: budgets, then weight decays, then learning rates."""
    if grid.budgets is not None and options.semisupervised:
        raise UserError(f"BaseDataset.semisupervised = {options.semisupervised} and probe_grid.budgets both set the "
                        "label budget: keep one of them")
    budgets = [b or None for b in grid.budgets] if grid.budgets is not None else [options.semisupervised]
    scales: list[tuple[float | None, float | None]] = [(None, None)]
    if grid.lrs is not None:
        peak = peak_lr(build_optimizer([torch.zeros(1, requires_grad=True)]).defaults["lr"])
        if not peak > 0:
            raise UserError("probe_grid.lrs scales the schedule to each peak learning rate, but every rate of "
                            "optimizer.lr and scheduler.target_lrs is 0: give the schedule a positive rate")
        scales = [(lr, float(f"{lr / peak:.12g}")) for lr in grid.lrs]  # 0.3 / 0.2 -> 1.5, not 1.4999999999999998
    return [Head(budget, wd, lr, scale) for budget, wd, (lr, scale) in
            itertools.product(budgets, grid.weight_decays or [None], scales)]


def check_grid(parts: Parts) -> GridOptions | None:
    """The trial's grid, if it is a grid trial; a `UserError` if its model, task or budgets do not fit."""
    grid = grid_options()
    if grid is None:
        return None
    model, task = parts.model, parts.task
    if type(task).__name__ != "ClassifyTask" or getattr(task, "is_pose", False) or model.dense_pred:
        raise UserError("probe_grid.* trains linear heads on each image's class: use session.task = 'ClassifyTask' "
                        "(without is_pose) on a classification set, with Wrapper.dense_pred = False")
    if not model.always_frozen or model.run_selfsup:
        raise UserError("probe_grid.* trains linear probes on a frozen backbone: set Wrapper.finetune_classifier = "
                        "False (and leave Wrapper.run_selfsup False)")
    if not isinstance(model.classifier, torch.nn.Linear) or len(model.more_heads):
        raise UserError("probe_grid.* trains linear heads, one output per class: leave Wrapper.classifier = 'linear' "
                        "and Wrapper.out_classes a single number")
    if parts.settings.restore_session:
        raise UserError("session.restore_session continues a trial; a probe grid starts its heads afresh: drop it "
                        "(Wrapper.pretrained gives the backbone)")
    augments = parts.augment.applies_to("train") and parts.augment.changes_images
    if grid.views and not augments:
        raise UserError(f"probe_grid.views = {grid.views} encodes augmented views, but augment.* leaves the training "
                        "images as they are: set probe_grid.views = 0, or turn on an augmentation (e.g. augment.crop)")
    if not grid.views and augments:
        legacy.note("probe_grid.views = 0: the heads train on features of the plain training images (augment.* is "
                    "not applied); set probe_grid.views to encode augmented views")
    for head in grid_heads(grid, parts.options):
        budget_rows(parts.dataset, parts.options, head.budget)
    return grid


def budget_rows(dataset: DatasetFiles, options: DataOptions, budget: int | None) -> np.ndarray:
    """The training file's rows of a head's budget: those of the probe trial with that budget."""
    everything = dataset.split_rows(dataclasses.replace(options, semisupervised=None))["train"]
    if budget is not None and budget > len(everything):
        raise UserError(f"probe_grid.budgets has {budget}, more than the {len(everything)} training images of "
                        f"{dataset.name}: lower it (0 = all of them)")
    return dataset.split_rows(dataclasses.replace(options, semisupervised=budget))["train"]


class HeadState:
    """A head's parameters, optimizer, schedule and selection."""

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
        self.error = ""  # why it stopped (diverged), once it has

    def state_dict(self) -> dict[str, Any]:
        return {"weight": self.weight.detach(), "bias": self.bias.detach(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "selection": self.selection.state_dict(),
                "best_accuracy": self.best_accuracy, "error": self.error}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"])
            self.bias.copy_(state["bias"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.selection.load_state_dict(state["selection"])
        self.best_accuracy, self.error = state["best_accuracy"], state["error"]


@dataclass
class Group:
    """The heads of one label budget: they share its batches and its feature standardisation."""

    rows: torch.Tensor  # positions in the encoded training split
    norm: torch.nn.Module  # the Wrapper's feature_norm, one per group (its statistics follow the group's batches)
    heads: list[int]
    steps_per_epoch: int


class GridTrial(Trial):
    """A trial that trains a probe grid (see the module's docstring)."""

    def setup_training(self, parts: Parts) -> None:
        self.grid = check_grid(parts)
        self.heads = grid_heads(self.grid, parts.options)
        self.num_epochs = build_schedule(1.0, 1).num_epochs
        wanted = ("train",) + ("valid",) * bool(self.settings.valid_iters) + ("test",) * bool(self.settings.test_iters)
        everything = dataclasses.replace(parts.options, semisupervised=None)
        splits = parts.dataset.load(everything, self.device, wanted)
        all_rows = parts.dataset.split_rows(everything)["train"]
        self.model.eval()
        try:
            encoded = {name: self.encode(split) for name, split in splits.items() if name != "train"}
            views = [self.encode(splits["train"], augment=bool(self.grid.views)) for _ in range(max(self.grid.views, 1))]
        finally:
            for split in splits.values():
                split.close()
        self.train_views = torch.stack([features for features, _ in views])  # V x N x D
        self.features = {name: features for name, (features, _) in encoded.items()}
        self.targets = {"train": views[0][1], **{name: targets for name, (_, targets) in encoded.items()}}
        self.groups: list[Group] = []
        self.states: list[HeadState] = []
        for budget in dict.fromkeys(head.budget for head in self.heads):
            rows = np.searchsorted(all_rows, budget_rows(parts.dataset, parts.options, budget))
            steps = num_batches(len(rows), self.batch_size, self.settings.train_iters, train=True)
            members = [k for k, head in enumerate(self.heads) if head.budget == budget]
            norm = copy.deepcopy(self.model.feature_norm)
            self.groups.append(Group(torch.from_numpy(rows).to(self.device), norm, members, steps))
        group_of = {k: group for group in self.groups for k in group.heads}
        self.states = [HeadState(head, self.model.classifier, group_of[k].steps_per_epoch,
                                 Selection(self.selection.metric, self.selection.mode))
                       for k, head in enumerate(self.heads)]

    @torch.no_grad()
    def encode(self, split: ResidentSplit | DividedSplit, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features (N x D, float32) and targets (N) of a split's images, in order;
        each image augmented once with `augment`."""
        features, targets = [], []
        for batch in split.batches(self.batch_size, -1):
            if augment:
                batch = self.augment.batch(batch, self.mean, self.std, self.device_generator)
            with self.autocast():
                features.append(self.model.backbone(batch.images).float())
            targets.append(batch.targets)
        return torch.cat(features), torch.cat(targets)

    def describe(self, trial_dir: Path) -> None:
        super().describe(trial_dir)
        write_json(trial_dir / PROBE_GRID_FILE, {"heads": [
            {"head": k, "bindings": head.bindings(), "peak_lr": head.peak_lr} for k, head in enumerate(self.heads)]})

    def run_epoch(self) -> dict[str, Any]:
        """Train every head one epoch on its budget's batches, then evaluate every head."""
        self.epoch += 1
        results: dict[int, dict[str, Any]] = {}
        view = self.train_views[(self.epoch - 1) % len(self.train_views)]
        for group in self.groups:
            results.update(self.train_group(group, view))
            for split, iters in (("valid", self.settings.valid_iters), ("test", self.settings.test_iters)):
                if iters:
                    for k, metrics in self.evaluate_group(group, split, iters).items():
                        results[k].update(metrics)
        self.step = self.epoch * max(group.steps_per_epoch for group in self.groups)  # of the longest budget
        for k, state in enumerate(self.states):
            results[k] = self.judge(state, results[k])
        live = [k for k, state in enumerate(self.states) if not state.error]
        if not live:
            raise UserError(f"every probe head diverged by epoch {self.epoch} ({self.states[0].error}): lower "
                            "probe_grid.lrs")
        sign = 1 if self.selection.mode == "max" else -1
        best = max(live, key=lambda k: sign * results[k][self.selection.metric])
        self.best_accuracy = max(self.states[k].best_accuracy for k in live)
        return {**results[best], "best_head": best, "epoch": self.epoch, "done": self.done,
                "completed": self.done, "heads": {str(k): metrics for k, metrics in results.items()}}

    def judge(self, state: HeadState, metrics: dict[str, Any]) -> dict[str, Any]:
        """A head's epoch metrics with its selection's; a diverged head stops here, with its reason."""
        if state.error:
            return {"error": state.error}
        diverged = next((name for name, value in metrics.items() if name.endswith("loss") and not math.isfinite(value)),
                        None)
        if diverged:
            fix = (f"lower its peak learning rate {state.head.peak_lr}" if state.head.peak_lr
                   else "lower optimizer.lr or scheduler.target_lrs")
            state.error = f"diverged at epoch {self.epoch} ({diverged} {metrics[diverged]}): {fix}"
            return {**metrics, "error": state.error}
        accuracy = metrics.get("valid_accuracy", metrics["train_accuracy"])
        state.best_accuracy = max(state.best_accuracy, accuracy)
        metrics.update(mean_accuracy=accuracy, best_accuracy=state.best_accuracy, epoch=self.epoch)
        state.schedule.observe(metrics)
        state.selection.update(metrics, self.epoch)
        metrics.update(state.selection.report())
        return metrics

    def train_group(self, group: Group, view: torch.Tensor) -> dict[int, dict[str, Any]]:
        """One epoch of the group's heads over its budget's batches (the probe trial's order)."""
        states = [self.states[k] for k in group.heads]
        live = [state for state in states if not state.error]
        split = ResidentSplit(view[group.rows], self.targets["train"][group.rows])
        group.norm.train()
        loss_sums = torch.zeros(len(states), device=self.device)
        correct = torch.zeros(len(states), device=self.device)
        count = 0
        step = (self.epoch - 1) * group.steps_per_epoch
        for batch in split.batches(self.batch_size, self.settings.train_iters, shuffle=(self.seed, self.epoch)):
            features = group.norm(batch.images)  # B x D
            for state in live:
                state.optimizer.param_groups[0]["lr"] = state.schedule.lr(step)
            logits = heads_logits(features, states)  # K x B x C
            losses = per_head_loss(logits, batch.targets)  # K
            for state in live:
                state.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            for state in live:
                state.optimizer.step()
            step += 1
            n = len(batch.targets)
            loss_sums += losses.detach() * n
            correct += (logits.detach().argmax(dim=2) == batch.targets).sum(dim=1)
            count += n
        lrs = [state.schedule.lr(step) for state in states]
        return {k: {"train_loss": float(loss) / count, "train_accuracy": float(hits) / count, "lr": lr}
                for k, loss, hits, lr in zip(group.heads, loss_sums.tolist(), correct.tolist(), lrs)}

    @torch.no_grad()
    def evaluate_group(self, group: Group, split: str, iters: int) -> dict[int, dict[str, float]]:
        """Loss and accuracy of the group's heads on the rows the probe trial evaluates."""
        features, targets = self.features[split], self.targets[split]
        n = min(len(targets), num_batches(len(targets), self.batch_size, iters, train=False) * self.batch_size)
        states = [self.states[k] for k in group.heads]
        group.norm.eval()
        loss_sums = torch.zeros(len(states), device=self.device, dtype=torch.float64)
        correct = torch.zeros(len(states), device=self.device)
        for start in range(0, n, EVAL_CHUNK):
            chunk = slice(start, min(n, start + EVAL_CHUNK))
            logits = heads_logits(group.norm(features[chunk]), states)
            loss_sums += per_head_loss(logits, targets[chunk]).double() * (chunk.stop - chunk.start)
            correct += (logits.argmax(dim=2) == targets[chunk]).sum(dim=1)
        return {k: {f"{split}_loss": float(loss) / max(n, 1), f"{split}_accuracy": float(hits) / max(n, 1)}
                for k, loss, hits in zip(group.heads, loss_sums.tolist(), correct.tolist())}

    def best_model_state(self) -> dict[str, torch.Tensor]:
        """The Wrapper's weights with the classifier of the head whose selected epoch is best (and its
        budget's feature statistics): what `Wrapper.pretrained` and misc/export_backbone.py take."""
        sign = 1 if self.selection.mode == "max" else -1
        judged = [k for k, state in enumerate(self.states) if state.selection.value is not None and not state.error]
        best = max(judged, key=lambda k: sign * self.states[k].selection.value, default=0)
        group = next(group for group in self.groups if best in group.heads)
        state = {key: value.detach() for key, value in self.model.state_dict().items()}
        state.update({"classifier.weight": self.states[best].weight.detach(),
                      "classifier.bias": self.states[best].bias.detach()})
        state.update({f"feature_norm.{key}": value for key, value in group.norm.state_dict().items()})
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.best_model_state(), "probe_grid": {"heads": [state.state_dict() for state in self.states],
                               "norms": [group.norm.state_dict() for group in self.groups]},
                "epoch": self.epoch, "step": self.step, "best_accuracy": self.best_accuracy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        grid = state.get("probe_grid")
        if grid is None or len(grid["heads"]) != len(self.states) or len(grid["norms"]) != len(self.groups):
            raise UserError("snapshot does not fit this probe grid (another grid, or not a probe grid's): start the "
                            "trial afresh")
        for head_state, saved in zip(self.states, grid["heads"]):
            head_state.load_state_dict(saved)
        for group, saved in zip(self.groups, grid["norms"]):
            group.norm.load_state_dict(saved)
        self.epoch, self.step, self.best_accuracy = state["epoch"], state["step"], state["best_accuracy"]

    def close(self) -> None:
        """Nothing runs in the background: the splits closed after encoding."""


def heads_logits(features: torch.Tensor, states: list[HeadState]) -> torch.Tensor:
    """features B x D -> logits K x B x C of the heads `states`, in one batched product."""
    weights = torch.stack([state.weight for state in states])  # K x C x D
    biases = torch.stack([state.bias for state in states])  # K x C
    return torch.baddbmm(biases[:, None, :], features.expand(len(states), -1, -1), weights.transpose(1, 2))


def per_head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats) of each head: logits K x B x C, targets B -> K."""
    k, b, c = logits.shape
    return F.cross_entropy(logits.reshape(k * b, c), targets.repeat(k), reduction="none").view(k, b).mean(dim=1)
