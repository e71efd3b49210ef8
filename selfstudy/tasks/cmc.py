"""Contrastive multiview coding (Tian et al. 2019) between the L and the ab channels of LAB
images: the backbone encodes L, a second encoder of the same architecture encodes ab, and
each view's embedding must pick its image's embedding of the other view out of a memory bank
holding one slowly updated embedding per training image."""

from __future__ import annotations

import copy

import gin
import torch
import torch.nn.functional as F
from torch import nn

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import SelfSupervisedTask, check_settings


def memory_bank_nce(z: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                    temperature: float) -> torch.Tensor:
    """InfoNCE of embeddings z (B x D) against their own bank entries of the other view
    (B x D) and K negative entries per row (B x K x D), all L2-normalised; nats."""
    positive = (z * positives).sum(dim=1, keepdim=True)  # B x 1
    negative = torch.einsum("bd,bkd->bk", z, negatives)  # B x K
    logits = upcast(torch.cat([positive, negative], dim=1)) / temperature
    return F.cross_entropy(logits, torch.zeros(len(z), dtype=torch.long, device=z.device))


def split_lab(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised LAB images B x 3 x H x W -> the L view (ab set to their mean, 0) and the ab
    view (L set to its mean), both still 3 channels for same-shaped encoders."""
    l_view, ab_view = images.clone(), images.clone()
    l_view[:, 1:] = 0
    ab_view[:, :1] = 0
    return l_view, ab_view


@gin.configurable
class CMCTask(SelfSupervisedTask):
    """`negatives` bank entries per image as negatives; bank entries move towards new embeddings
    with `bank_momentum`; the bank has one row per training image of the dataset."""

    def __init__(self, temperature: float = 0.07, negatives: int = 1024, bank_momentum: float = 0.5,
                 embedding: int = 128):
        super().__init__()
        check_settings("CMCTask", {"temperature": "positive", "negatives": "count", "bank_momentum": "fraction",
                                   "embedding": "count"}, locals())
        self.temperature, self.negatives, self.bank_momentum, self.embedding = (temperature, negatives,
                                                                                bank_momentum, embedding)

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        if dataset.train.color_space != "lab":
            raise UserError(f"CMCTask contrasts the L and ab channels of LAB images, but {dataset.name} stores "
                            f"{dataset.train.color_space}: use a LAB dataset (CIFARDataset.to_lab, "
                            "DigitsDataset.to_lab, misc/make_dataset.py --to-lab, misc/render_syn.py --to-lab)")
        images = len(rows["train"])  # the bank follows the dataset, passed explicitly
        self.ab_backbone = copy.deepcopy(model.backbone)
        for module in self.ab_backbone.modules():  # its own initialisation, not the L encoder's
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.l_head = nn.Linear(model.backbone.out_dim, self.embedding)
        self.ab_head = nn.Linear(model.backbone.out_dim, self.embedding)
        self.register_buffer("bank_l", F.normalize(torch.randn(images, self.embedding), dim=1))
        self.register_buffer("bank_ab", F.normalize(torch.randn(images, self.embedding), dim=1))

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        l_view, ab_view = split_lab(batch.images)
        features = model.backbone(l_view)
        z_l = F.normalize(upcast(self.l_head(features)), dim=1)
        z_ab = F.normalize(upcast(self.ab_head(self.ab_backbone(ab_view))), dim=1)
        rows = batch.index % len(self.bank_l)
        drawn = torch.randint(0, len(self.bank_l), (len(rows), self.negatives), device=rows.device)
        # The bank holds training images: an evaluated image's positive is its own other view.
        positive_l, positive_ab = (self.bank_l[rows], self.bank_ab[rows]) if self.training else (z_l, z_ab)
        loss = (memory_bank_nce(z_l, positive_ab, self.bank_ab[drawn], self.temperature)
                + memory_bank_nce(z_ab, positive_l, self.bank_l[drawn], self.temperature))
        if self.training:
            with torch.no_grad():
                for bank, z in ((self.bank_l, z_l), (self.bank_ab, z_ab)):
                    bank[rows] = F.normalize(self.bank_momentum * bank[rows] + (1 - self.bank_momentum) * z, dim=1)
        return loss, {}, features
