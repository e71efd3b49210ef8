"""Variational autoencoder (Kingma & Welling 2014) on the backbone: the pooled features give a
Gaussian posterior over a latent code, a small convolutional decoder reconstructs the image.
With `erase`, a random square of the input is blanked and the whole image must come back
(inpainting)."""

from __future__ import annotations

import math

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


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) in nats, summed over the latent dimensions (B x Z -> B)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def vae_loss(reconstruction: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             lmd: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction error, KL): the mean squared error per pixel value (normalised
    units) plus `lmd` times the mean KL per image (nats)."""
    error = F.mse_loss(upcast(reconstruction), upcast(target))
    kl = gaussian_kl(upcast(mu), upcast(logvar)).mean()
    return error + lmd * kl, error, kl


def erase_squares(images: torch.Tensor, size: int) -> torch.Tensor:
    """Blank (zero, the mean colour) one random size x size square inside each image."""
    b, _, h, w = images.shape
    top = torch.randint(0, h - size + 1, (b, 1, 1), device=images.device)
    left = torch.randint(0, w - size + 1, (b, 1, 1), device=images.device)
    rows, cols = torch.arange(h, device=images.device)[None, :, None], torch.arange(w, device=images.device)[None, None]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(inside[:, None], 0.0)


class Decoder(nn.Module):
    """Latent B x Z -> image B x C x res x res: a linear map to a coarse grid, then three
    upsampling convolution blocks."""

    def __init__(self, latent: int, channels: int, res: int, width: int = 64):
        super().__init__()
        self.res, self.width, self.start = res, width, max(1, math.ceil(res / 8))
        self.project = nn.Linear(latent, width * self.start * self.start)
        blocks = []
        for _ in range(3):
            blocks += [nn.Upsample(scale_factor=2), nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks, nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.project(z).view(len(z), self.width, self.start, self.start))
        return x if x.shape[-1] == self.res else F.interpolate(x, size=(self.res, self.res), mode="bilinear")


@gin.configurable
class VAETask(SelfSupervisedTask):
    """`lmd`: weight of the KL term; `latent`: code dimensions; `erase`: side of the blanked
    square for inpainting (0: a plain autoencoder); `output_res`: the side at which the decoder
    reconstructs the images (None: theirs; otherwise the images are resized to it to compare);
    `reparameterize`: the code is sampled from the posterior in training (False: its mean, a
    deterministic autoencoder with the KL term as a penalty)."""

    def __init__(self, lmd: float = 1e-3, latent: int = 64, erase: int = 0, output_res: int | None = None,
                 reparameterize: bool = True):
        super().__init__()
        check_settings("VAETask", {"lmd": "nonnegative", "latent": "count", "erase": "whole"}, locals())
        if output_res is not None:
            check_settings("VAETask", {"output_res": "count"}, locals())
        if not isinstance(reparameterize, bool):
            raise UserError(f"VAETask.reparameterize = {reparameterize!r} must be True or False")
        self.lmd, self.latent, self.erase = lmd, latent, erase
        self.output_res, self.reparameterize = output_res, reparameterize

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        res = dataset.resolution(options)
        if self.erase > res:
            raise UserError(f"VAETask.erase = {self.erase} blanks a square larger than the {res}x{res} images of "
                            f"{dataset.name}: give at most {res} pixels (0: off)")
        self.posterior = nn.Linear(model.backbone.out_dim, 2 * self.latent)  # mean and log-variance
        self.decoder = Decoder(self.latent, dataset.channels, self.output_res or res)

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        inputs = erase_squares(batch.images, self.erase) if self.erase else batch.images
        features = model.backbone(inputs)
        mu, logvar = upcast(self.posterior(features)).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training and self.reparameterize else mu
        target = batch.images
        if self.output_res and self.output_res != target.shape[-1]:
            target = F.interpolate(target, size=(self.output_res, self.output_res), mode="area")
        loss, error, kl = vae_loss(self.decoder(z), target, mu, logvar, self.lmd)
        return loss, {"reconstruction_error": error.detach(), "kl": kl.detach()}, features
