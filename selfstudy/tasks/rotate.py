"""Rotation prediction (Gidaris et al. 2018): which of 0, 90, 180, 270 degrees was an image turned by."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F
from torch import nn

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.models import Wrapper
from selfstudy.tasks.base import SelfSupervisedTask


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images B x C x H x W (square) -> the four rotations stacked, 4B x C x H x W, and their
    labels 4B: label k marks a turn by k x 90 degrees counter-clockwise (block k of the stack)."""
    turned = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(len(images))
    return turned, labels


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (nats) and accuracy of rotation logits N x 4 against labels N in 0..3."""
    return F.cross_entropy(logits.float(), labels), (logits.argmax(1) == labels).float().mean()


@gin.configurable
class RotateTask(SelfSupervisedTask):
    """A linear head on the backbone's features predicts the rotation of every image, all four
    rotations of each image in the batch."""

    data_parallel = True

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        self.head = nn.Linear(model.backbone.out_dim, 4)

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        turned, labels = rotate_batch(batch.images)
        features = model.backbone(turned)
        loss, accuracy = rotation_loss(self.head(features), labels)
        return loss, {"rotation_accuracy": accuracy}, features[: len(batch.images)]
