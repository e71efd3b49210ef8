"""VICReg (Bardes et al. 2022): two views' projections agree (invariance), every dimension keeps
a standard deviation of at least 1 over the batch (variance), and dimensions do not covary
(covariance); no negatives, no target network."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

from selfstudy import distributed
from selfstudy.precision import upcast
from selfstudy.tasks.base import ProjectedViewsTask, check_settings


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """mean_j relu(1 - sqrt(Var_j(z) + eps)): the hinge on each dimension's batch standard
    deviation (unbiased), z B x D."""
    return F.relu(1 - (z.var(0) + eps).sqrt()).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} Cov(z)_ij^2 / D, the covariance over the batch (unbiased), z B x D."""
    z = z - z.mean(0)
    cov = z.T @ z / (len(z) - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / z.shape[1]


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, invariance: float, variance: float,
                covariance: float) -> torch.Tensor:
    """invariance * MSE(z1, z2) + variance * (v(z1) + v(z2)) / 2 + covariance * (c(z1) + c(z2)),
    the weights of the paper 25, 25 and 1 (`variance_term`, `covariance_term`; z B x D each)."""
    z1, z2 = upcast(z1), upcast(z2)
    return (invariance * F.mse_loss(z1, z2) + variance * (variance_term(z1) + variance_term(z2)) / 2
            + covariance * (covariance_term(z1) + covariance_term(z2)))


@gin.configurable
class VICRegTask(ProjectedViewsTask):
    """VICReg on projections of two augmented views (`BaseDataset.double_sample = True`)."""

    def __init__(self, invariance: float = 25.0, variance: float = 25.0, covariance: float = 1.0,
                 proj_dim: int = 512, proj_hidden: int = 512):
        super().__init__()
        check_settings("VICRegTask", {"invariance": "nonnegative", "variance": "nonnegative",
                                      "covariance": "nonnegative", "proj_dim": "count", "proj_hidden": "count"},
                       locals())
        self.weights = (invariance, variance, covariance)
        self.proj_dim, self.proj_hidden = proj_dim, proj_hidden

    data_parallel = True  # the whole batch's loss in every worker, on embeddings gathered from all

    def views_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if self.training:  # a worker's share of a training batch: the whole batch's rows
            z1, z2 = distributed.gather(z1), distributed.gather(z2)
        return vicreg_loss(z1, z2, *self.weights)
