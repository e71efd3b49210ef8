"""Depth estimation on multi-object scenes: per-pixel distance from the camera, learnt with an
L1 loss on the pixels that show an object (background has no depth)."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F
from torch import nn

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import Task

DEPTH_PRIOR = 3.2  # the head starts at the camera's distance to the scene centre (render.scene.CAMERA_Z)
DEPTH_SUMS = ("pixels", "abs_error", "squared_error", "under_1.25", "under_1.1")  # what `depth_sums` holds


def depth_loss(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean absolute error (scene units) over the pixels with depth (target > 0) of prediction
    and target B x H x W, and the batch's 'depth_sums' (5, float64: `DEPTH_SUMS`), which an
    epoch sums over its split before `depth_metrics`."""
    valid = target > 0
    p, t = upcast(prediction)[valid], upcast(target)[valid]
    ratio = torch.maximum(p / t, t / p.clamp(min=1e-6))
    loss = (p - t).abs().mean()
    error = (p - t).detach().double()
    sums = torch.stack([error.new_tensor(len(error)), error.abs().sum(), error.pow(2).sum(),
                        (ratio < 1.25).sum().double(), (ratio < 1.1).sum().double()])
    return loss, {"depth_sums": sums}


def depth_metrics(sums: torch.Tensor) -> dict[str, torch.Tensor]:
    """The metrics of the pixels `sums` (`DEPTH_SUMS`, of a batch or a whole split) counts:
    'mae' and 'rmse' in scene units, the usual accuracies 'delta_1.25' and 'delta_1.1' (the
    fraction of pixels with max(p / t, t / p) below the bound). NaN without a pixel."""
    pixels, abs_error, squared_error, under_125, under_11 = sums.double().unbind()
    return {"mae": abs_error / pixels, "rmse": (squared_error / pixels).sqrt(), "delta_1.25": under_125 / pixels,
            "delta_1.1": under_11 / pixels}


@gin.configurable
class DepthTask(Task):
    """A 1x1 convolution on the backbone's feature map, upsampled to the image, predicts depth.
    'loss' is the batches' L1 (each batch's mean over its pixels, averaged over batches by
    images); 'mae', 'rmse' and the delta accuracies are over all the split's pixels with depth."""

    needs = ("depth",)

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
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
        return loss, {"loss": loss.detach(), **metrics}

    def epoch_metrics(self, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Over the split's pixels, not averaged over its batches: 'accuracy' is delta_1.25."""
        metrics = depth_metrics(counts["depth_sums"])
        return {"accuracy": metrics["delta_1.25"], **metrics}
