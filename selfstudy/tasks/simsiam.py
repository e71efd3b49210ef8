"""SimSiam (Chen and He 2021): a predictor maps one view's projection onto the other's, whose
gradient is stopped; no negatives and no moving-average target."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import ProjectedViewsTask, check_settings, projection_head


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2, averaged over the batch (B x D each); sg stops
    the gradient. -1 when each prediction points along the other view's projection."""
    def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return -F.cosine_similarity(upcast(p), upcast(z.detach()), dim=1).mean()

    return (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2


@gin.configurable
class SimSiamTask(ProjectedViewsTask):
    """SimSiam on two augmented views (`BaseDataset.double_sample = True`): a projector, and a
    predictor with a bottleneck of `pred_hidden`."""

    data_parallel = True

    def __init__(self, proj_dim: int = 512, proj_hidden: int = 512, pred_hidden: int = 128):
        super().__init__()
        check_settings("SimSiamTask", {"proj_dim": "count", "proj_hidden": "count", "pred_hidden": "count"}, locals())
        self.proj_dim, self.proj_hidden, self.pred_hidden = proj_dim, proj_hidden, pred_hidden

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        self.predictor = projection_head(self.proj_dim, self.pred_hidden, self.proj_dim)

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        z1, z2, features = self.projections(model, batch)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        return simsiam_loss(p1, p2, z1, z2), {}, features
