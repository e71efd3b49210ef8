"""SimCLR (Chen et al. 2020): two views of an image attract, every other image in the batch repels."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

from selfstudy import distributed
from selfstudy.precision import upcast
from selfstudy.tasks.base import ProjectedViewsTask, check_settings


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float,
            whole: tuple[torch.Tensor, torch.Tensor] | None = None, start: int = 0) -> torch.Tensor:
    """Normalised-temperature cross-entropy of embeddings z1, z2 (B x D, row i of each from the
    same image): each of the 2B embeddings classifies its partner among the other 2B - 1 by
    cosine similarity / temperature. Mean over the 2B, in nats. `whole`: the embeddings of a
    bigger batch (N x D each) whose rows `start` .. `start + B` are z1 and z2, the candidates
    then (a data-parallel worker's share against every worker's)."""
    anchors = F.normalize(upcast(torch.cat([z1, z2])), dim=1)
    candidates = anchors if whole is None else F.normalize(upcast(torch.cat(whole)), dim=1)
    b, n = len(z1), len(candidates) // 2
    similarity = anchors @ candidates.T / temperature  # 2B x 2N
    own = torch.cat([torch.arange(start, start + b), torch.arange(n + start, n + start + b)]).to(z1.device)
    similarity[torch.arange(2 * b, device=z1.device), own] = float("-inf")  # an embedding is not its own partner
    return F.cross_entropy(similarity, torch.cat([own[b:], own[:b]]))


@gin.configurable
class SimCLRTask(ProjectedViewsTask):
    """NT-Xent on projections of two augmented views (`BaseDataset.double_sample = True`)."""

    def __init__(self, temperature: float = 0.5, proj_dim: int = 128, proj_hidden: int = 512):
        super().__init__()
        check_settings("SimCLRTask", {"temperature": "positive", "proj_dim": "count", "proj_hidden": "count"},
                       locals())
        self.temperature, self.proj_dim, self.proj_hidden = temperature, proj_dim, proj_hidden

    data_parallel = True  # each worker's share against the negatives of every worker

    def views_loss(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        rank, workers = distributed.world()
        if workers == 1 or not self.training:  # evaluation batches are not shared
            return nt_xent(z1, z2, self.temperature)
        return nt_xent(z1, z2, self.temperature, (distributed.gather(z1), distributed.gather(z2)), rank * len(z1))
