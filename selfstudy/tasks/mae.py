"""MAE (He et al. 2022): a ViT encodes a random quarter of each image's patches, and a light
decoder predicts the pixels of the masked ones from the visible tokens and a shared mask token."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F
from torch import nn

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.errors import UserError
from selfstudy.models import ViT, Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import SelfSupervisedTask, check_settings


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """B x C x H x W -> B x N x (patch * patch * C): the patches in the order a ViT's tokens
    take them (row-major), each flattened row by row with its channels last."""
    b, c, h, w = images.shape
    grid = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return grid.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def mae_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the masked patches. prediction, target: B x N x P pixel values
    per patch; mask: B x N, 1 where a patch was masked. With `norm_pix` each target patch is
    standardised by its own mean and (unbiased) variance first (+1e-6), as MAE's default."""
    target = upcast(target)
    if norm_pix:
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    per_patch = ((upcast(prediction) - target) ** 2).mean(dim=-1)  # B x N
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


def random_masking(batch: int, tokens: int, ratio: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image keeps round((1 - ratio) * tokens) of its patch tokens, drawn uniformly: the kept
    indices B x K (ascending) and the mask B x N (1: masked)."""
    kept = max(1, round(tokens * (1 - ratio)))
    keep = torch.rand(batch, tokens, device=device).argsort(dim=1)[:, :kept].sort(dim=1).values
    mask = torch.ones(batch, tokens, device=device).scatter_(1, keep, 0.0)
    return keep, mask


def sincos_2d(side: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings of a side x side grid, (side * side) x dim
    (half the features for the row, half for the column; MAE's decoder uses these)."""
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                                indexing="ij")
    parts = [f(axis.reshape(-1, 1) * frequencies) for axis in (rows, cols) for f in (torch.sin, torch.cos)]
    embedding = torch.cat(parts, dim=1)
    return F.pad(embedding, (0, dim - embedding.shape[1])).float()


@gin.configurable
class MAETask(SelfSupervisedTask):
    """Masked autoencoding on a ViT (`init_resnet.choice = 'vit_tiny'`, ...): `mask_ratio` of the
    patches masked, a decoder of `decoder_depth` transformer blocks `decoder_dim` wide
    (`decoder_heads` heads), the loss on per-patch normalised pixels (`norm_pix_loss`). The
    probes read the pooled features of the whole image (the encoder's output without masking,
    one more forward pass without gradients), so that they measure what a transfer would use;
    `online_probes = False` leaves them out (and that pass: the speed of MAE alone; the run then
    reports its loss, and kNN accuracy with `knn.every`)."""

    def __init__(self, mask_ratio: float = 0.75, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, norm_pix_loss: bool = True, online_probes: bool = True):
        super().__init__()
        check_settings("MAETask", {"decoder_dim": "count", "decoder_depth": "count", "decoder_heads": "count"},
                       locals())
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio < 1:
            raise UserError(f"MAETask.mask_ratio = {mask_ratio!r} must lie strictly between 0 and 1 (MAE: 0.75)")
        if decoder_dim % decoder_heads:
            raise UserError(f"MAETask.decoder_dim = {decoder_dim} must be a multiple of MAETask.decoder_heads = "
                            f"{decoder_heads}")
        self.mask_ratio, self.norm_pix_loss, self.online_probes = mask_ratio, norm_pix_loss, online_probes
        self.decoder_dim, self.decoder_depth, self.decoder_heads = decoder_dim, decoder_depth, decoder_heads

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        if not isinstance(model.backbone, ViT):
            raise UserError("MAETask masks the patches of a vision transformer, but the backbone is a ResNet: set "
                            "init_resnet.choice = 'vit_tiny' (or vit_small, vit_base)")
        self.probes = self.probes and self.online_probes
        from timm.models.vision_transformer import Block

        backbone = model.backbone
        side = dataset.resolution(options) // backbone.patch_size
        if round(side * side * (1 - self.mask_ratio)) >= side * side:
            raise UserError(f"MAETask.mask_ratio = {self.mask_ratio} masks none of the {side * side} patches: raise it "
                            "(MAE: 0.75)")
        self.patch = backbone.patch_size
        self.decoder_embed = nn.Linear(backbone.out_dim, self.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", F.pad(sincos_2d(side, self.decoder_dim), (0, 0, 1, 0))[None],
                             persistent=False)  # the class token's row is 0, as MAE's
        self.decoder = nn.Sequential(*(Block(self.decoder_dim, self.decoder_heads, qkv_bias=True)
                                       for _ in range(self.decoder_depth)))
        self.decoder_norm = nn.LayerNorm(self.decoder_dim)
        self.decoder_pred = nn.Linear(self.decoder_dim, self.patch ** 2 * dataset.channels)

    def encode_visible(self, backbone: ViT, images: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder on the class token and the kept patches: B x (1 + K) x D."""
        net = backbone.net
        tokens = net._pos_embed(net.patch_embed(images))  # B x (1 + N) x D, position embeddings added
        patches = tokens[:, 1:].gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return net.norm(net.blocks(net.norm_pre(torch.cat([tokens[:, :1], patches], dim=1))))

    def decode(self, latent: torch.Tensor, keep: torch.Tensor, tokens: int) -> torch.Tensor:
        """Visible latents B x (1 + K) x D -> predicted pixels of every patch, B x N x P."""
        visible = self.decoder_embed(latent)
        b, _, width = visible.shape
        full = self.mask_token.to(visible.dtype).expand(b, tokens, width).scatter(
            1, keep[..., None].expand(-1, -1, width), visible[:, 1:])
        x = torch.cat([visible[:, :1], full], dim=1) + self.decoder_pos.to(visible.dtype)
        return self.decoder_pred(self.decoder_norm(self.decoder(x)))[:, 1:]

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        images = batch.images
        tokens = (images.shape[-2] // self.patch) * (images.shape[-1] // self.patch)
        keep, mask = random_masking(len(images), tokens, self.mask_ratio, images.device)
        prediction = self.decode(self.encode_visible(model.backbone, images, keep), keep, tokens)
        loss = mae_loss(prediction, patchify(images, self.patch), mask, self.norm_pix_loss)
        with torch.set_grad_enabled(torch.is_grad_enabled() and model.labels_train_backbone):
            features = model.backbone(images) if self.probes else images.new_zeros(len(images), 0)
        return loss, {}, features

