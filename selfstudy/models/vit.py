"""Vision transformers from timm, sized for small images.

`init_resnet.choice = 'vit_tiny'` (or 'vit_small', 'vit_base') builds timm's ViT of that width
and depth (`TIMM_NAMES`) for the dataset's images: `ViT.patch_size` pixels per patch (default a
grid of 8 x 8 patches: 4 at 32 pixels, 8 at 64), one class token, learned position embeddings.
The pooled feature (`ViT.pool`) is the class token ('cls') or the mean of the patch tokens
('mean'), both after the final LayerNorm; dense tasks read the patch tokens as a feature map
B x D x h x w. Images of another size than the dataset's (e.g. DINO's local crops) take the
position embeddings resampled to their grid (timm's dynamic image size).

The parameters keep timm's names under `net.` (`net.cls_token`, `net.blocks.0.attn.qkv.weight`,
...): a timm state dict loads into `net` as it is, and `timm_config` says how to build the
same model with `timm.create_model`. timm is imported when a ViT is first built (it takes
seconds).
"""

from __future__ import annotations

from typing import Any

import gin
import torch
from torch import nn

from selfstudy.errors import UserError

TIMM_NAMES = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224",
              "vit_base": "vit_base_patch16_224"}
POOLS = {"cls": "token", "mean": "avg"}


def timm_config(arch: str, in_channels: int, input_res: int, patch_size: int, pool: str,
                depth: int | None = None) -> dict[str, Any]:
    """`timm.create_model(**config)` builds this backbone without a classifier (num_classes 0)."""
    config = {"model_name": TIMM_NAMES[arch], "img_size": input_res, "patch_size": patch_size,
              "in_chans": in_channels, "num_classes": 0, "global_pool": POOLS[pool], "fc_norm": False}
    return config if depth is None else {**config, "depth": depth}


@gin.configurable
class ViT(nn.Module):
    """A timm VisionTransformer; `forward` gives pooled features B x out_dim."""

    layout_prefix = "net."  # where timm's parameter names start in this module's state dict

    def __init__(self, arch: str, in_channels: int = 3, input_res: int = 32, patch_size: int | None = None,
                 pool: str = "cls", drop_path: float = 0.0, depth: int | None = None):
        """`drop_path`: stochastic depth rate of the last block (timm's drop_path_rate); `depth`:
        transformer blocks (None: the model's own, 12; fewer make a quick test model)."""
        super().__init__()
        if arch not in TIMM_NAMES:
            raise UserError(f"unknown ViT {arch!r}; choose from: {', '.join(TIMM_NAMES)}")
        patch = max(input_res // 8, 1) if patch_size is None else patch_size
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or input_res % patch:
            divisors = [d for d in range(1, input_res + 1) if input_res % d == 0 and input_res // d >= 2]
            raise UserError(f"ViT.patch_size = {patch_size!r} does not divide the {input_res}-pixel images into whole "
                            f"patches: choose one of {', '.join(map(str, divisors))} (or set BaseDataset.input_res)")
        if pool not in POOLS:
            raise UserError(f"unknown ViT.pool {pool!r}; choose 'cls' (the class token) or 'mean' (of the patch tokens)")
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
            raise UserError(f"ViT.depth = {depth!r} must be a whole number of blocks, at least 1 (or None: 12)")
        if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)) or not 0 <= drop_path < 1:
            raise UserError(f"ViT.drop_path = {drop_path!r} must be a number in [0, 1)")
        import timm

        self.timm_config = timm_config(arch, in_channels, input_res, patch, pool, depth)
        self.net = timm.create_model(**self.timm_config, dynamic_img_size=True, drop_path_rate=drop_path)
        self.patch_size = patch
        self.pool = pool
        self.out_dim = self.net.num_features
        self.stage_names = ["tokens"]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x (1 + N) x D: the class token, then the N patch tokens (row-major),
        after the final LayerNorm."""
        return self.net.forward_features(x)

    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """B x (1 + N) x D -> B x D: `ViT.pool` of the tokens."""
        return tokens[:, 0] if self.pool == "cls" else tokens[:, self.net.num_prefix_tokens:].mean(dim=1)

    def grid(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The patch tokens of images height x width as a feature map B x D x h x w."""
        patches = tokens[:, self.net.num_prefix_tokens:]
        h, w = height // self.patch_size, width // self.patch_size
        return patches.transpose(1, 2).reshape(len(tokens), self.out_dim, h, w)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> the patch tokens, B x out_dim x H / patch x W / patch."""
        return self.grid(self.tokens(x), *x.shape[-2:])

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One stage: the patch tokens as a map (a ViT keeps one scale throughout)."""
        return [self.feature_map(x)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled(self.tokens(x))
