"""The epoch loop: one training step, top to bottom, and evaluation of a split.

A step: the batch (on the device already) -> its augmentation on the device, with the second
view of a two-view method -> `loss, metrics = task.loss(model, batch)` (the method's file in
`selfstudy/tasks/`; the backbone is `selfstudy/models/`) -> backward (its global norm clipped if `gradients.max_norm` says) -> the optimizer at the
schedule's rate for this step -> `task.after_step` (momentum encoders follow the model) -> the
batch's metrics into the epoch's sums. `Trial` (`selfstudy.trial`) owns the state the loop
changes and saves it in its checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from selfstudy import distributed
from selfstudy.augment import Augment
from selfstudy.data import Batch
from selfstudy.models import Wrapper
from selfstudy.optim import PlateauSchedule, Schedule
from selfstudy.tasks import Task


@dataclass
class Prep:
    """What a batch meets on the device before the task sees it: augmentation (for the splits
    `augment.do_augment` names), the second view, and autocast at the trial's precision."""

    augment: Augment
    mean: torch.Tensor  # C: the training file's per-channel mean and standard deviation
    std: torch.Tensor
    generator: torch.Generator  # on the device: every augmentation draws from it
    double_sample: bool  # two views per image (BaseDataset.double_sample)
    device: torch.device
    amp_dtype: torch.dtype | None  # None: float32
    dtype: torch.dtype = torch.float32  # of the images (float64 with session.precision = 'fp64')

    def __call__(self, batch: Batch, split: str) -> Batch:
        """The batch as the task sees it: augmented if the split is, with its second view if asked;
        of a training batch, this worker's share (`selfstudy.distributed`: all of it for one worker)."""
        if self.augment.applies_to(split):
            batch = self.augment.batch(batch, self.mean, self.std, self.generator, self.double_sample)
        elif self.double_sample:
            batch = batch._replace(view2=batch.images)
        if self.dtype != torch.float32:
            batch = batch._replace(**{name: value.to(self.dtype) for name, value in batch._asdict().items()
                                      if isinstance(value, torch.Tensor) and value.is_floating_point()})
        return distributed.share(batch) if split == "train" else batch

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


@dataclass
class Optimization:
    """What a training step updates: the optimizer, its rate per step and the loss scaler."""

    optimizer: torch.optim.Optimizer
    schedule: Schedule | PlateauSchedule
    scaler: torch.amp.GradScaler
    total_steps: int  # of the whole run (a momentum schedule reads its progress from it)
    max_norm: float | None = None  # clip the gradients' global norm to this (gradients.max_norm)


def train_epoch(model: Wrapper, task: Task, batches: Iterable[Batch], prep: Prep, opt: Optimization,
                step: int) -> tuple[dict[str, float], int]:
    """Train on `batches`, starting at global step `step`; the epoch's `train_*` metrics and the
    step after its last."""
    model.train()
    task.train()
    sums = MetricSums(over_workers=True)
    params = [p for group in opt.optimizer.param_groups for p in group["params"]]
    for batch in batches:
        weight = distributed.share_weight(len(batch.images))  # 1 for a single worker
        batch = prep(batch, "train")
        model.set_step(step)
        for group in opt.optimizer.param_groups:
            group["lr"] = opt.schedule.lr(step)
        with prep.autocast():
            loss, metrics = task.loss(model, batch)
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss * weight if weight != 1 else loss).backward()
        distributed.reduce_gradients(params)
        if opt.max_norm is not None:
            opt.scaler.unscale_(opt.optimizer)
            torch.nn.utils.clip_grad_norm_(params, opt.max_norm)
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        task.after_step(model, step, opt.total_steps)
        step += 1
        sums.add(metrics, len(batch.targets))
    return sums.means("train", task), step


@torch.no_grad()
def evaluate(model: Wrapper, task: Task, batches: Iterable[Batch], prep: Prep, split: str) -> dict[str, float]:
    """The `<split>_*` metrics of the model on `batches`, in eval mode, without gradients."""
    model.eval()
    task.eval()
    sums = MetricSums()
    for batch in batches:
        batch = prep(batch, split)
        with prep.autocast():
            _, metrics = task.loss(model, batch)
        sums.add(metrics, len(batch.targets))
    return sums.means(split, task)


class MetricSums:
    """Per-split running sums of batch metrics; one sync at the end. Scalar metrics are weighted
    by batch size and reported as means; count metrics (tensors of one or more dimensions, such
    as a confusion matrix) are summed as they are and turned into scalars by the task's
    `epoch_metrics` (e.g. mean IoU over the whole split)."""

    def __init__(self, over_workers: bool = False) -> None:
        """`over_workers`: the sums of a data-parallel trial's workers are added together first
        (each trained on its share of every batch)."""
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.over_workers = over_workers

    def add(self, metrics: dict[str, torch.Tensor], n: int) -> None:
        for name, value in metrics.items():
            value = value.detach()
            self.sums[name] = self.sums.get(name, 0) + (value.float() * n if value.ndim == 0 else value)
        self.count += n

    def means(self, split: str, task: Task | None = None) -> dict[str, float]:
        if self.over_workers:
            self.sums, self.count = distributed.reduce_sums(self.sums, self.count)
        means = {name: float(total) / max(self.count, 1) for name, total in self.sums.items() if total.ndim == 0}
        counts = {name: total for name, total in self.sums.items() if total.ndim > 0}
        if task is not None and counts:
            means.update({name: float(value) for name, value in task.epoch_metrics(counts).items()})
        return {f"{split}_{name}": value for name, value in means.items()}
