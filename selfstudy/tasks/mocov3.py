"""MoCo v3 (Chen, Xie and He 2021): no queue; a query view's prediction must pick its own key,
encoded by a momentum copy of backbone and projector, among the keys of the other images of the
batch. Symmetric: view 1 queries view 2's keys and view 2 view 1's.

The paper's projector has three layers (4096 wide, 256 out) and its predictor two; here both are
`projection_head` (two layers), sized by settings for our small images. Any backbone with
`out_dim` and `forward: B x C x H x W -> B x out_dim` works (ResNets; ViTs)."""

from __future__ import annotations

import copy

import gin
import torch
import torch.nn.functional as F

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import ProjectedViewsTask, check_settings, projection_head
from selfstudy.tasks.byol import ema_momentum
from selfstudy.tasks.moco import momentum_update


def mocov3_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """2 T x the cross-entropy of logits B x B = normalised q (B x D) @ normalised k.T / T against
    the diagonal (query i's key is row i; the other rows are its negatives). Nats, scaled by 2 T as
    MoCo v3 does, so that its gradient's size does not depend on T."""
    logits = F.normalize(upcast(q), dim=1) @ F.normalize(upcast(k), dim=1).T / temperature
    return 2 * temperature * F.cross_entropy(logits, torch.arange(len(q), device=q.device))


@gin.configurable
class MoCoV3Task(ProjectedViewsTask):
    """MoCo v3 on two augmented views (`BaseDataset.double_sample = True`): projector and
    predictor (`pred_hidden` wide) on the online side; the momentum encoder's momentum rises from
    `base_momentum` to 1 along a cosine over training. The loss is the sum of both directions,
    as in the paper."""

    def __init__(self, temperature: float = 1.0, base_momentum: float = 0.99, proj_dim: int = 128,
                 proj_hidden: int = 512, pred_hidden: int = 512):
        super().__init__()
        check_settings("MoCoV3Task", {"temperature": "positive", "base_momentum": "fraction", "proj_dim": "count",
                                      "proj_hidden": "count", "pred_hidden": "count"}, locals())
        self.temperature, self.base_momentum = temperature, base_momentum
        self.proj_dim, self.proj_hidden, self.pred_hidden = proj_dim, proj_hidden, pred_hidden

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)  # the projector
        self.predictor = projection_head(self.proj_dim, self.pred_hidden, self.proj_dim)
        self.key_backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        z1, z2, features = self.projections(model, batch)
        q1, q2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        with torch.no_grad():
            k1, k2 = self.key_projector(self.key_backbone(torch.cat([batch.images, batch.view2]))).chunk(2)
        loss = mocov3_loss(q1, k2, self.temperature) + mocov3_loss(q2, k1, self.temperature)
        return loss, {}, features

    def after_step(self, model: Wrapper, step: int, total_steps: int) -> None:
        momentum = ema_momentum(self.base_momentum, step, total_steps)
        momentum_update(self.key_backbone, model.backbone, momentum)
        momentum_update(self.key_projector, self.projector, momentum)
