"""What every task provides, and the shared frame of the self-supervised ones."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.notes import note

RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "positive": (lambda v: 0 < v < math.inf, "a finite number above 0"),
    "nonnegative": (lambda v: 0 <= v < math.inf, "a finite number, at least 0"),
    "fraction": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "count": (lambda v: isinstance(v, int) and v >= 1, "a whole number, at least 1"),
    "whole": (lambda v: isinstance(v, int) and v >= 0, "a whole number, at least 0"),
}


def check_settings(owner: str, rules: dict[str, str], values: dict[str, Any]) -> None:
    """Raise a one-line `UserError` for the first setting `owner.<name>` whose value in `values`
    breaks its rule of `RULES` (a bool is never a number here)."""
    for name, rule in rules.items():
        value = values[name]
        test, must = RULES[rule]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
            raise UserError(f"{owner}.{name} = {value!r} must be {must}")


class Task(nn.Module):
    """A training objective. `loss` is stateless between calls except for the task's own
    parameters and buffers (heads, queues, target networks), which `setup` creates; they
    train with the model and are saved in its checkpoints. `needs` names further per-image
    maps of the dataset file the task reads from its batches (e.g. 'depth'). `more_labels`
    names what the task trains the Wrapper's further heads on (none: it takes one head)."""

    needs: tuple[str, ...] = ()
    more_labels: tuple[str, ...] = ()  # what further heads of a list Wrapper.out_classes learn, in order
    uses_local_views = False  # whether the task reads Batch.local_views (augment.local_crops)
    # whether workers that each take a share of every batch (selfstudy.distributed) give the
    # one-worker trial's numbers: a loss that is a mean of per-image terms (or one on rows
    # gathered from every worker), without randomness of its own
    data_parallel = False

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        """Raise `UserError` if the dataset or options lack what the task needs; build heads.
        `rows`: the trial's split plan, the training file's rows of each split (computed once)."""

    def loss(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss to minimise and named metrics of the batch: scalars (e.g. 'accuracy'),
        averaged over a split, or counts (tensors of one or more dimensions, e.g. a 'confusion'
        matrix), summed over a split and turned into metrics by `epoch_metrics`."""
        raise NotImplementedError

    def epoch_metrics(self, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scalar metrics of a whole split from the sums of its batches' count metrics."""
        return {}

    def after_step(self, model: Wrapper, step: int, total_steps: int) -> None:
        """Called after each optimizer step (momentum encoders follow the model here)."""

    def own_batch_norm(self, model: Wrapper) -> tuple[nn.Module, ...]:
        """Modules whose BatchNorm normalises sub-batches of the task's own choosing (MoCo's
        shuffle-BN): `workers.sync` leaves them as they are."""
        return ()

    def check_workers(self, batch_size: int, workers: int) -> None:
        """Raise `UserError` if the task cannot split a global batch of `batch_size` into
        `workers` shares and still give one worker's numbers."""
        if not self.data_parallel:
            raise UserError(f"workers_per_trial = {workers}: {type(self).__name__} does not split over workers yet (its "
                            "loss reads the whole batch, or draws randomness per image); run it with "
                            "workers_per_trial = 1")


class SelfSupervisedTask(Task):
    """A pretraining method. `objective` gives its loss, metrics and the backbone features of
    the (first view of the) batch; with `Wrapper.run_selfsup`, linear and MLP probes train on
    those features, detached, so every run reports how good its features are ('accuracy' is
    the linear probe's)."""

    needs_two_views = False
    probes = True  # whether the linear and MLP probes train (a class per image to learn)

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        name = type(self).__name__
        if self.needs_two_views and not options.double_sample:
            raise UserError(f"{name} compares two views of each image, but BaseDataset.double_sample is False: "
                            "set it to True")
        if not model.run_selfsup:
            raise UserError(f"{name} is a self-supervised method: set Wrapper.run_selfsup = True (the probes then "
                            "report feature quality)")
        self.probes = not dataset.train.target_shape
        if not self.probes:
            note(f"{dataset.name} has a class per pixel, but the probes of {name} learn a class per image: they are "
                 "left out, and the run reports the method's loss (transfer its weights to a dense task with "
                 "Wrapper.pretrained)")

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, metrics, features = self.objective(model, batch)
        if not self.probes:
            return loss, {"loss": loss.detach(), **metrics}
        probe_loss, probe_metrics = model.probe_loss(features, batch.targets)
        return loss + probe_loss, {"loss": loss.detach(), **metrics, **probe_metrics}


def projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """Linear - BatchNorm - ReLU - Linear, the usual projector of contrastive methods."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


class ProjectedViewsTask(SelfSupervisedTask):
    """A method on the projections of two augmented views of each image (`BaseDataset.double_sample
    = True`): the backbone encodes both views in one pass, and `projector` (made in `setup`, of
    `proj_hidden` and `proj_dim` features) maps them; `views_loss(z1, z2)` is the method's."""

    needs_two_views = True
    proj_dim: int
    proj_hidden: int

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        self.projector = projection_head(model.backbone.out_dim, self.proj_hidden, self.proj_dim)

    def projections(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The two views' projections (B x proj_dim each) and the first view's backbone features."""
        features = model.backbone(torch.cat([batch.images, batch.view2]))
        z1, z2 = self.projector(features).chunk(2)
        return z1, z2, features[: len(batch.images)]

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        z1, z2, features = self.projections(model, batch)
        return self.views_loss(z1, z2), {}, features

    def views_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
