"""AMDIM (Bachman et al. 2019): maximise mutual information between the global features of one
view and the local features of the other, at several scales, with a noise-contrastive loss
whose scores are softly clipped (`tclip`) and kept small by a penalty on their squares (`reg`),
as in the reference implementation."""

from __future__ import annotations

import gin
import torch
from torch import nn

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import SelfSupervisedTask, check_settings


def amdim_nce(global_: torch.Tensor, local: torch.Tensor, tclip: float, reg: float = 5e-2) -> torch.Tensor:
    """InfoNCE of global embeddings B x E against local embeddings B x E x N (N positions):
    each (image i, position p) pair must score its own global embedding above every position
    of every other image. Scores are dot products / sqrt(E), softly clipped to +-tclip. Nats,
    plus `reg` times the mean square of the raw (unclipped) scores over all B x B x N pairs."""
    b, e, n = local.shape
    scores = torch.einsum("be,cen->bcn", upcast(global_), upcast(local)) / e ** 0.5  # B x B x N
    penalty = reg * scores.pow(2).mean()
    scores = tclip * torch.tanh(scores / tclip)
    positive = scores[torch.arange(b), torch.arange(b)]  # B x N
    others = scores.masked_fill(torch.eye(b, dtype=torch.bool, device=scores.device)[:, :, None], float("-inf"))
    negative = torch.logsumexp(others.reshape(b, -1), dim=1, keepdim=True)  # B x 1
    return (torch.logaddexp(positive, negative) - positive).mean() + penalty


@gin.configurable
class AMDIMTask(SelfSupervisedTask):
    """Global features of each view against the local features of the other view on the last
    two stages of the backbone (`scales`), both directions; `reg` weighs the score penalty."""

    needs_two_views = True

    def __init__(self, tclip: float = 20.0, embedding: int = 256, scales: int = 2, reg: float = 5e-2):
        super().__init__()
        check_settings("AMDIMTask", {"tclip": "positive", "embedding": "count", "scales": "count",
                                     "reg": "nonnegative"}, locals())
        self.tclip, self.embedding, self.scales, self.reg = tclip, embedding, scales, reg

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        res = dataset.resolution(options)
        probe = torch.zeros(2, dataset.channels, res, res, device=next(model.backbone.parameters()).device)
        was_training = model.backbone.training
        model.backbone.eval()  # a shape probe must not move the running statistics
        with torch.no_grad():
            channels = [m.shape[1] for m in model.backbone.stage_maps(probe)]
        model.backbone.train(was_training)
        if self.scales > len(channels):
            raise UserError(f"AMDIMTask.scales = {self.scales} asks for more stages than the {len(channels)} the "
                            f"backbone runs: give at most {len(channels)}")
        self.global_head = nn.Linear(model.backbone.out_dim, self.embedding)
        self.local_heads = nn.ModuleList(nn.Conv2d(c, self.embedding, 1) for c in channels[-self.scales:])

    def embed(self, model: Wrapper, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        maps = model.backbone.stage_maps(images)
        features = maps[-1].mean(dim=(2, 3))
        local = [head(m).flatten(2) for head, m in zip(self.local_heads, maps[-self.scales:])]
        return self.global_head(features), local, features

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        g1, local1, features = self.embed(model, batch.images)
        g2, local2, _ = self.embed(model, batch.view2)
        terms = [amdim_nce(g, l, self.tclip, self.reg) for g, locals_ in ((g1, local2), (g2, local1)) for l in locals_]
        return torch.stack(terms).mean(), {}, features
