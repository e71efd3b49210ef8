"""BYOL (Grill et al. 2020): an online network predicts a target network's projection of the
other view; the target is an exponential moving average of the online network."""

from __future__ import annotations

import copy
import math

import gin
import torch
import torch.nn.functional as F

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import SelfSupervisedTask, check_settings, projection_head
from selfstudy.tasks.moco import momentum_update


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """2 - 2 cos(prediction, target), averaged over the batch (B x D each): 0 when aligned,
    2 when orthogonal, 4 when opposite."""
    return (2 - 2 * F.cosine_similarity(upcast(prediction), upcast(target), dim=1)).mean()


def ema_momentum(base: float, step: int, total_steps: int) -> float:
    """The target's momentum, rising from `base` to 1 along a cosine over training."""
    return 1 - (1 - base) * (math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)) + 1) / 2


@gin.configurable
class BYOLTask(SelfSupervisedTask):
    """Symmetric BYOL loss with a projector and predictor; target momentum from `base_momentum`."""

    needs_two_views = True
    data_parallel = True  # its target follows the same parameters in every worker

    def __init__(self, base_momentum: float = 0.99, proj_dim: int = 128, proj_hidden: int = 512):
        super().__init__()
        check_settings("BYOLTask", {"base_momentum": "fraction", "proj_dim": "count", "proj_hidden": "count"},
                       locals())
        self.base_momentum, self.proj_dim, self.proj_hidden = base_momentum, proj_dim, proj_hidden

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        self.projector = projection_head(model.backbone.out_dim, self.proj_hidden, self.proj_dim)
        self.predictor = projection_head(self.proj_dim, self.proj_hidden, self.proj_dim)
        self.target_backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        views = torch.cat([batch.images, batch.view2])
        features = model.backbone(views)
        p1, p2 = self.predictor(self.projector(features)).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_backbone(views)).chunk(2)
        loss = (byol_loss(p1, t2) + byol_loss(p2, t1)) / 2
        return loss, {}, features[: len(batch.images)]

    def after_step(self, model: Wrapper, step: int, total_steps: int) -> None:
        momentum = ema_momentum(self.base_momentum, step, total_steps)
        momentum_update(self.target_backbone, model.backbone, momentum)
        momentum_update(self.target_projector, self.projector, momentum)
