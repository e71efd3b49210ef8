"""Backbones: the fast CIFAR ResNet-9 and torchvision's ResNet-18/50.

A backbone maps images B x C x H x W to pooled features B x `out_dim`. Its stages run in
order; `ResNet.feat_layer` names the last stage to run, `ResNet.freeze_at_k` freezes the
first k stages (weights and batch-norm statistics), `ResNet.out_feats` adds a 1x1
convolution to that many channels before pooling. ResNet-18/50 keep torchvision's
parameter names (`conv1.weight`, `layer1.0.bn1.running_mean`, ...), so torchvision
state dicts load into them; for inputs of 64 pixels or less their stem is a 3x3,
stride-1 convolution without max-pooling (the usual CIFAR variant).
"""

from __future__ import annotations

from typing import Callable

import gin
import torch
import torchvision
from torch import nn

from selfstudy.errors import UserError


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resnet9_stages(in_channels: int, width: int) -> dict[str, nn.Module]:
    """ResNet-9 of the 'how to train your ResNet' series; channels width, 2w, 4w, 8w."""
    w = width
    return {
        "prep": conv_bn(in_channels, w),
        "layer1": nn.Sequential(conv_bn(w, 2 * w), nn.MaxPool2d(2), Residual(2 * w)),
        "layer2": nn.Sequential(conv_bn(2 * w, 4 * w), nn.MaxPool2d(2)),
        "layer3": nn.Sequential(conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), Residual(8 * w)),
    }


def torchvision_stages(factory: Callable[..., torchvision.models.ResNet], in_channels: int,
                       small_input: bool) -> dict[str, nn.Module]:
    """torchvision's stages under their own names; the stem's modules stay top-level."""
    net = factory(weights=None)
    if small_input or in_channels != 3:
        kernel, stride = (3, 1) if small_input else (7, 2)
        net.conv1 = nn.Conv2d(in_channels, 64, kernel, stride, padding=kernel // 2, bias=False)
    if small_input:
        net.maxpool = nn.Identity()
    return {"stem": nn.Sequential(), "conv1": net.conv1, "bn1": net.bn1, "relu": net.relu, "maxpool": net.maxpool,
            "layer1": net.layer1, "layer2": net.layer2, "layer3": net.layer3, "layer4": net.layer4}


ARCHITECTURES = {
    "resnet9": lambda c, w, small: resnet9_stages(c, w),
    "resnet18": lambda c, w, small: torchvision_stages(torchvision.models.resnet18, c, small),
    "resnet50": lambda c, w, small: torchvision_stages(torchvision.models.resnet50, c, small),
}
STEM = ("conv1", "bn1", "relu", "maxpool")


@gin.configurable
class ResNet(nn.Module):
    """A backbone of `ARCHITECTURES`; `forward` gives pooled features B x out_dim."""

    def __init__(self, arch: str, in_channels: int = 3, input_res: int = 32, feat_layer: str | None = None,
                 freeze_at_k: int = 0, out_feats: int | None = None, width: int = 64):
        """`width`: resnet9's first-stage channels (64 in the original); torchvision's ResNets keep theirs."""
        super().__init__()
        if arch not in ARCHITECTURES:
            raise UserError(f"unknown init_resnet.choice {arch!r}; choose from: {', '.join(ARCHITECTURES)}")
        for name, module in ARCHITECTURES[arch](in_channels, width, input_res <= 64).items():
            if name != "stem":
                self.add_module(name, module)
        self.stage_names = ["stem" if arch != "resnet9" else "prep"] + [n for n in ("layer1", "layer2", "layer3",
                                                                                     "layer4") if hasattr(self, n)]
        feat_layer = feat_layer or self.stage_names[-1]
        if feat_layer not in self.stage_names:
            raise UserError(f"ResNet.feat_layer {feat_layer!r} is not a stage of {arch}; choose from: "
                            f"{', '.join(self.stage_names)}")
        self.stage_names = self.stage_names[: self.stage_names.index(feat_layer) + 1]
        if not 0 <= freeze_at_k <= len(self.stage_names):
            raise UserError(f"ResNet.freeze_at_k = {freeze_at_k}: {arch} up to {feat_layer} has "
                            f"{len(self.stage_names)} stages")
        self.freeze_at_k = freeze_at_k
        channels = self._channels(in_channels, input_res)
        self.project = (nn.Sequential(nn.Conv2d(channels, out_feats, 1, bias=False), nn.BatchNorm2d(out_feats),
                                      nn.ReLU(inplace=True)) if out_feats else nn.Identity())
        self.out_dim = out_feats or channels
        for module in self._stages(self.freeze_at_k):
            module.requires_grad_(False)

    def _stages(self, count: int | None = None) -> list[nn.Module]:
        names = self.stage_names[:count]
        return [getattr(self, s) for n in names for s in (STEM if n == "stem" else (n,))]

    @torch.no_grad()
    def _channels(self, in_channels: int, input_res: int) -> int:
        probe = torch.zeros(1, in_channels, input_res, input_res, device=next(self.parameters()).device)
        was_training = self.training
        self.eval()
        for module in self._stages():
            probe = module(probe)
        self.train(was_training)
        return probe.shape[1]

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        for module in self._stages(self.freeze_at_k):  # frozen stages keep their statistics
            module.eval()
        return self

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after each stage up to `feat_layer` (the last one projected, as in
        `feature_map`): coarser and deeper from first to last."""
        maps = []
        for name in self.stage_names:
            for module in (getattr(self, s) for s in (STEM if name == "stem" else (name,))):
                x = module(x)
            maps.append(x)
        maps[-1] = self.project(maps[-1])
        return maps

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x out_dim x h x w, after `feat_layer`."""
        for module in self._stages():
            x = module(x)
        return self.project(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))  # global average pool; deterministic on GPUs


@gin.configurable
def init_resnet(in_channels: int, input_res: int, choice: str = "resnet9") -> ResNet:
    """`init_resnet.choice`: resnet9, resnet18 or resnet50."""
    return ResNet(choice, in_channels=in_channels, input_res=input_res)
