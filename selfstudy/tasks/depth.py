"""Depth estimation on multi-object scenes: per-pixel distance from the camera, learnt with an
L1 loss on the pixels that show an object (background has no depth)."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F
from torch import nn

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.tasks.base import Task

DEPTH_PRIOR = 3.2  # the head starts at the camera's distance to the scene centre (render.scene.CAMERA_Z)


def depth_loss(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean absolute error over pixels with depth (target > 0) of prediction and target B x H x W,
    in scene units, with the usual accuracies delta < 1.25 and delta < 1.1 (the fraction of
    pixels with max(p / t, t / p) below the bound) and the root mean squared error."""
    valid = target > 0
    p, t = prediction.float()[valid], target.float()[valid]
    ratio = torch.maximum(p / t, t / p.clamp(min=1e-6))
    loss = (p - t).abs().mean()
    return loss, {"delta_1.25": (ratio < 1.25).float().mean(), "delta_1.1": (ratio < 1.1).float().mean(),
                  "rmse": (p - t).pow(2).mean().sqrt()}


@gin.configurable
class DepthTask(Task):
    """A 1x1 convolution on the backbone's feature map, upsampled to the image, predicts depth."""

    needs = ("depth",)

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions) -> None:
        if "depth" not in dataset.train.extras:
            raise UserError(f"DepthTask needs depth maps, but {dataset.name} has none (a classification set): "
                            "render a multi-object set with misc/render_syn.py --multi")
        self.head = nn.Conv2d(model.backbone.out_dim, 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, DEPTH_PRIOR)

    def loss(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        feature_map = model.backbone.feature_map(batch.images)
        prediction = F.interpolate(self.head(feature_map), size=batch.images.shape[-2:], mode="bilinear",
                                   align_corners=False)[:, 0]
        loss, metrics = depth_loss(prediction, batch.depth)
        return loss, {"loss": loss.detach(), "accuracy": metrics["delta_1.25"], **metrics}
