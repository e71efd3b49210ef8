"""SimCLR (Chen et al. 2020): two views of an image attract, every other image in the batch repels."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

from selfstudy.tasks.base import ProjectedViewsTask, check_settings


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy of embeddings z1, z2 (B x D, row i of each from the
    same image): each of the 2B embeddings classifies its partner among the other 2B - 1 by
    cosine similarity / temperature. Mean over the 2B, in nats."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    b = len(z1)
    similarity = z @ z.T / temperature  # 2B x 2B
    similarity.fill_diagonal_(float("-inf"))  # an embedding is not its own partner
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(similarity, partner)


@gin.configurable
class SimCLRTask(ProjectedViewsTask):
    """NT-Xent on projections of two augmented views (`BaseDataset.double_sample = True`)."""

    def __init__(self, temperature: float = 0.5, proj_dim: int = 128, proj_hidden: int = 512):
        super().__init__()
        check_settings("SimCLRTask", {"temperature": "positive", "proj_dim": "count", "proj_hidden": "count"},
                       locals())
        self.temperature, self.proj_dim, self.proj_hidden = temperature, proj_dim, proj_hidden

    def views_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature)
