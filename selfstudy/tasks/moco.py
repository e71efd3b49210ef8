"""MoCo v2 (Chen et al. 2020): a query view must pick its key, encoded by a slowly moving copy of
the network, out of a queue of keys from earlier batches.

Shuffle-BN on one device: MoCo encodes queries and keys on several GPUs, each normalising its
own sub-batch, and shuffles the keys across GPUs, so that a query and its key never share
BatchNorm statistics (otherwise the model can find its positive by the batch's statistics
instead of by content). Here both encoders run on `bn_splits` sub-batches one after another,
and the key batch is permuted before its split and restored after (as MoCo's single-GPU
reimplementations do with a split BatchNorm)."""

from __future__ import annotations

import copy
from typing import Callable

import gin
import torch
import torch.nn.functional as F

from selfstudy import distributed
from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import SelfSupervisedTask, check_settings, projection_head

Encoder = Callable[[torch.Tensor], torch.Tensor]


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries q (B x D) against their keys k (B x D) and negatives queue (K x D),
    all L2-normalised: logits B x (1 + K) = [q . k, q . queue] / temperature, target 0. Nats."""
    positive = (q * k).sum(dim=1, keepdim=True)  # B x 1
    logits = upcast(torch.cat([positive, q @ queue.T], dim=1)) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def momentum_update(target: torch.nn.Module, online: torch.nn.Module, momentum: float) -> None:
    """Parameters: target <- momentum * target + (1 - momentum) * online. Buffers (BatchNorm
    running statistics and counters) are copied from the online network, not averaged: they
    are already running averages."""
    with torch.no_grad():
        for t, o in zip(target.parameters(), online.parameters()):
            t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
        for t, o in zip(target.buffers(), online.buffers()):
            t.copy_(o)


def split_encode(encoders: tuple[Encoder, ...], images: torch.Tensor, groups: int) -> tuple[torch.Tensor, ...]:
    """Chained encoders (backbone, projector) on `groups` consecutive sub-batches of images
    B x C x H x W, each sub-batch on its own, so that in training each one's BatchNorm sees only
    its own statistics; the output of every encoder, B x D each, in the order of the images."""
    outputs: list[list[torch.Tensor]] = [[] for _ in encoders]
    for part in images.tensor_split(groups):  # sizes differ by at most one
        for encoder, out in zip(encoders, outputs):
            part = encoder(part)
            out.append(part)
    return tuple(torch.cat(out) for out in outputs)


def shuffled_encode(encoders: tuple[Encoder, ...], images: torch.Tensor, groups: int,
                    generator: torch.Generator | None = None, shared: bool = False) -> torch.Tensor:
    """The last encoder's output B x D for images B x C x H x W, encoded by `split_encode` in a
    random order and returned in the images' order (shuffle-BN: an image's sub-batch, and so its
    BatchNorm statistics, is a random draw of the batch). `shared`: the images are this worker's
    share of a batch (`selfstudy.distributed`); the order is drawn over the whole batch, as
    MoCo shuffles across GPUs, each worker encodes its share of the shuffled batch in its
    `groups` / workers sub-batches, and every worker gets the whole batch's outputs."""
    rank, workers = distributed.world() if shared else (0, 1)
    whole = distributed.gather(images) if workers > 1 else images
    order = torch.randperm(len(whole), device=images.device, generator=generator)
    start, end = distributed.share_bounds(len(whole), rank, workers)
    encoded = split_encode(encoders, whole[order[start:end]], groups // workers)[-1]
    return (distributed.gather(encoded) if workers > 1 else encoded)[torch.argsort(order)]


@gin.configurable
class MoCoTask(SelfSupervisedTask):
    """`queue_size` keys of earlier batches are the negatives; the key encoder is an exponential
    moving average (`momentum`) of backbone and projector's parameters. In training, queries
    and keys are encoded in `bn_splits` sub-batches (at most half the batch size, so that each
    holds two images), keys in a shuffled order (shuffle-BN)."""

    needs_two_views = True
    data_parallel = True  # shuffle-BN across workers, the whole batch's keys into every worker's queue

    def __init__(self, temperature: float = 0.2, momentum: float = 0.99, queue_size: int = 4096,
                 proj_dim: int = 128, proj_hidden: int = 512, bn_splits: int = 8):
        super().__init__()
        check_settings("MoCoTask", {"temperature": "positive", "momentum": "fraction", "queue_size": "count",
                                    "proj_dim": "count", "proj_hidden": "count"}, locals())
        if not isinstance(bn_splits, int) or bn_splits < 2:
            raise UserError(f"MoCoTask.bn_splits = {bn_splits!r} must be an integer >= 2: queries and keys need "
                            "sub-batches of their own for BatchNorm (shuffle-BN); MoCo's CIFAR recipe uses 8")
        self.temperature, self.momentum, self.queue_size = temperature, momentum, queue_size
        self.proj_dim, self.proj_hidden, self.bn_splits = proj_dim, proj_hidden, bn_splits

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        images = len(rows["train"])
        if self.queue_size >= images:
            raise UserError(f"MoCoTask.queue_size = {self.queue_size} is not below the {images} training images of "
                            f"{dataset.name}: the queue would hold each image's own earlier keys as negatives; set it "
                            f"well below (MoCo's ImageNet queue is about 5% of the images: {max(images // 20, 1)})")
        self.projector = projection_head(model.backbone.out_dim, self.proj_hidden, self.proj_dim)
        self.key_backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, self.proj_dim), dim=1))
        self.register_buffer("queue_position", torch.zeros((), dtype=torch.long))

    def sub_batches(self, batch_size: int) -> int:
        """Sub-batches of a (whole) training batch: two images or more each."""
        return max(1, min(self.bn_splits, batch_size // 2))

    def own_batch_norm(self, model: Wrapper) -> tuple[torch.nn.Module, ...]:
        return model.backbone, self.projector, self.key_backbone, self.key_projector

    def check_workers(self, batch_size: int, workers: int) -> None:
        groups = self.sub_batches(batch_size)
        if groups % workers or batch_size % groups:
            raise UserError(f"MoCoTask with workers_per_trial = {workers}: its {groups} BatchNorm sub-batches "
                            f"(MoCoTask.bn_splits) of dataloader.batch_size = {batch_size} must be equal and split "
                            f"evenly over the workers: make bn_splits a multiple of {workers} that divides the batch")

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        # in evaluation BatchNorm uses running statistics: no split (nor are evaluation batches shared)
        rank, workers = distributed.world() if self.training else (0, 1)
        groups = self.sub_batches(len(batch.images) * workers) if self.training else 1
        with distributed.chained_batch_norm((model.backbone, self.projector), groups // workers):
            features, q = split_encode((model.backbone, self.projector), batch.images, groups // workers)
        q = F.normalize(q, dim=1)
        with torch.no_grad():
            keys = shuffled_encode((self.key_backbone, self.key_projector), batch.view2, groups, shared=self.training)
            keys = F.normalize(keys, dim=1)  # of the whole batch
        start, end = distributed.share_bounds(len(keys), rank, workers)
        negatives = self.queue.clone().to(q.dtype)  # enqueue() below changes the queue before backward
        loss = moco_loss(q, keys[start:end].to(q.dtype), negatives, self.temperature)
        if self.training:
            self.enqueue(keys.to(self.queue.dtype))  # every worker's queue the same
        return loss, {}, features

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Replace the oldest keys with these (the queue is a ring)."""
        rows = (self.queue_position + torch.arange(len(keys), device=keys.device)) % self.queue_size
        self.queue[rows] = keys
        self.queue_position.copy_((self.queue_position + len(keys)) % self.queue_size)

    def after_step(self, model: Wrapper, step: int, total_steps: int) -> None:
        momentum_update(self.key_backbone, model.backbone, self.momentum)
        momentum_update(self.key_projector, self.projector, self.momentum)
