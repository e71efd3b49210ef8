"""MoCo v2 (Chen et al. 2020): a query view must pick its key, encoded by a slowly moving copy of
the network, out of a queue of keys from earlier batches."""

from __future__ import annotations

import copy

import gin
import torch
import torch.nn.functional as F

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.tasks.base import SelfSupervisedTask, projection_head


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries q (B x D) against their keys k (B x D) and negatives queue (K x D),
    all L2-normalised: logits B x (1 + K) = [q . k, q . queue] / temperature, target 0. Nats."""
    positive = (q * k).sum(dim=1, keepdim=True)  # B x 1
    logits = torch.cat([positive, q @ queue.T], dim=1).float() / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def momentum_update(target: torch.nn.Module, online: torch.nn.Module, momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameters and buffers alike."""
    with torch.no_grad():
        for t, o in zip(target.state_dict().values(), online.state_dict().values()):
            if t.is_floating_point():
                t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
            else:
                t.copy_(o)


@gin.configurable
class MoCoTask(SelfSupervisedTask):
    """`queue_size` keys of earlier batches are the negatives; the key encoder is an exponential
    moving average (`momentum`) of backbone and projector."""

    needs_two_views = True

    def __init__(self, temperature: float = 0.2, momentum: float = 0.99, queue_size: int = 4096,
                 proj_dim: int = 128, proj_hidden: int = 512):
        super().__init__()
        self.temperature, self.momentum, self.queue_size = temperature, momentum, queue_size
        self.proj_dim, self.proj_hidden = proj_dim, proj_hidden

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions) -> None:
        super().setup(model, dataset, options)
        images = len(dataset.split_rows(options)["train"])
        if self.queue_size >= images:
            raise UserError(f"MoCoTask.queue_size = {self.queue_size} is not below the {images} training images of "
                            f"{dataset.name}: the queue would hold each image's own earlier keys as negatives; set it "
                            f"well below (MoCo's ImageNet queue is about 5% of the images: {max(images // 20, 1)})")
        self.projector = projection_head(model.backbone.out_dim, self.proj_hidden, self.proj_dim)
        self.key_backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(self.queue_size, self.proj_dim), dim=1))
        self.register_buffer("queue_position", torch.zeros((), dtype=torch.long))

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        features = model.backbone(batch.images)
        q = F.normalize(self.projector(features), dim=1)
        with torch.no_grad():
            k = F.normalize(self.key_projector(self.key_backbone(batch.view2)), dim=1)
        negatives = self.queue.clone().to(q.dtype)  # enqueue() below changes the queue before backward
        loss = moco_loss(q, k.to(q.dtype), negatives, self.temperature)
        if self.training:
            self.enqueue(k.float())
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
