"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' projections, each
standardised over the batch, is pushed towards the identity: matching dimensions agree, the
others carry no shared information."""

from __future__ import annotations

import gin
import torch

from selfstudy import distributed
from selfstudy.precision import upcast
from selfstudy.tasks.base import ProjectedViewsTask, check_settings


def standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each column of z (B x D) less its batch mean, over its batch standard deviation (biased)."""
    z = upcast(z)
    return (z - z.mean(0)) / (z.var(0, unbiased=False) + eps).sqrt()


def barlow_loss(z1: torch.Tensor, z2: torch.Tensor, off_diagonal: float) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + off_diagonal * sum_{i != j} C_ij^2, where C = s(z1)^T s(z2) / B is
    the D x D cross-correlation of the standardised projections (B x D each)."""
    c = standardise(z1).T @ standardise(z2) / len(z1)
    on = (1 - c.diagonal()).pow(2).sum()
    off = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on + off_diagonal * off


@gin.configurable
class BarlowTwinsTask(ProjectedViewsTask):
    """Barlow Twins on projections of two augmented views (`BaseDataset.double_sample = True`);
    `off_diagonal` is the paper's lambda (0.0051)."""

    def __init__(self, off_diagonal: float = 0.0051, proj_dim: int = 512, proj_hidden: int = 512):
        super().__init__()
        check_settings("BarlowTwinsTask", {"off_diagonal": "nonnegative", "proj_dim": "count", "proj_hidden": "count"},
                       locals())
        self.off_diagonal, self.proj_dim, self.proj_hidden = off_diagonal, proj_dim, proj_hidden

    data_parallel = True  # the whole batch's loss in every worker, on embeddings gathered from all

    def views_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        if self.training:  # a worker's share of a training batch: the whole batch's rows
            z1, z2 = distributed.gather(z1), distributed.gather(z2)
        return barlow_loss(z1, z2, self.off_diagonal)
