"""Supervised classification: cross-entropy and accuracy."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

from selfstudy.data import Batch
from selfstudy.models import Wrapper
from selfstudy.tasks.base import Task


def classify_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (nats) and accuracy (fraction) of logits B x K against targets B."""
    loss = F.cross_entropy(logits.float(), targets)
    accuracy = (logits.argmax(dim=1) == targets).float().mean()
    return loss, accuracy


@gin.configurable
class ClassifyTask(Task):
    """Predict each image's class with the wrapper's classifier."""

    def loss(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, accuracy = classify_loss(model(batch.images).logits, batch.targets)
        return loss, {"loss": loss.detach(), "accuracy": accuracy}
