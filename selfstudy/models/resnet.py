"""Backbones: the fast CIFAR ResNet-9 and torchvision's ResNet-18/50.

A backbone maps images B x C x H x W to pooled features B x `out_dim`. Its stages run in
order (stage 0 is the stem, stage k the k-th layer); `ResNet.feat_layer` names the last
stage to run, `ResNet.freeze_at_k = k` freezes the stem and layers 1 to k + 1 (weights and
batch-norm statistics; 2020: gradients stop after layer k + 1), `ResNet.out_feats` adds a
1x1 convolution to that many channels before pooling. ResNet-18/50 keep torchvision's
parameter names (`conv1.weight`, `layer1.0.bn1.running_mean`, ...), so torchvision state
dicts load into them; for inputs of 64 pixels or less their stem is a 3x3, stride-1
convolution without max-pooling (the usual CIFAR variant).

2020 settings keep their 2020 meaning: `feat_layer = -1` is the last stage and an int k the
pooled output of stage k, without projection; `prepool_fc` (a bool) makes `out_feats` the
2020 projection, a linear map applied per position before pooling (True) or to the pooled
features (False; the same features, as a linear map commutes with the mean); `is_half` halves every layer's channels (the stem keeps its own);
`skip_init_pool` removes (True) or keeps (False) the stem's max-pool;
`replace_stride_with_dilation` is torchvision's.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import gin
import torch
from torch import nn

from selfstudy import notes
from selfstudy.errors import UserError
from selfstudy.models.vit import TIMM_NAMES, ViT


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Residual(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StageSpec(NamedTuple):
    """How a backbone is built: what the architecture's stages depend on."""

    in_channels: int
    width: int  # resnet9's stem channels
    small_input: bool  # 64 pixels or less: a 3x3 stride-1 stem
    half: bool  # ResNet.is_half
    init_pool: bool  # the stem's max-pool (torchvision ResNets)
    dilate: tuple[bool, bool, bool]  # ResNet.replace_stride_with_dilation


def resnet9_stages(spec: StageSpec) -> dict[str, nn.Module]:
    """ResNet-9 of the 'how to train your ResNet' series; channels width, 2w, 4w, 8w (layers
    halved with is_half)."""
    if any(spec.dilate):
        raise UserError("ResNet.replace_stride_with_dilation applies to resnet18/50; resnet9 pools instead of "
                        "striding: leave it None")
    w = spec.width
    s = w // 2 if spec.half else w  # the layers' base width
    return {
        "prep": conv_bn(spec.in_channels, w),
        "layer1": nn.Sequential(conv_bn(w, 2 * s), nn.MaxPool2d(2), Residual(2 * s)),
        "layer2": nn.Sequential(conv_bn(2 * s, 4 * s), nn.MaxPool2d(2)),
        "layer3": nn.Sequential(conv_bn(4 * s, 8 * s), nn.MaxPool2d(2), Residual(8 * s)),
    }


@functools.cache
def torchvision_resnet(half: bool) -> type:
    """torchvision's ResNet class, or one with every layer's channels halved (the stem keeps 64).
    torchvision is imported here, when first needed: it takes a second (it loads torch._dynamo)."""
    from torchvision.models import resnet

    if not half:
        return resnet.ResNet

    class HalfWidthResNet(resnet.ResNet):
        def _make_layer(self, block: type, planes: int, blocks: int, stride: int = 1,
                        dilate: bool = False) -> nn.Sequential:
            return super()._make_layer(block, planes // 2, blocks, stride, dilate)

    return HalfWidthResNet


def torchvision_stages(block: str, layers: list[int], spec: StageSpec) -> dict[str, nn.Module]:
    """torchvision's stages under their own names; the stem's modules stay top-level."""
    from torchvision.models import resnet

    net = torchvision_resnet(spec.half)(getattr(resnet, block), layers, replace_stride_with_dilation=list(spec.dilate))
    if spec.small_input or spec.in_channels != 3:
        kernel, stride = (3, 1) if spec.small_input else (7, 2)
        net.conv1 = nn.Conv2d(spec.in_channels, 64, kernel, stride, padding=kernel // 2, bias=False)
    if not spec.init_pool:
        net.maxpool = nn.Identity()
    return {"stem": nn.Sequential(), "conv1": net.conv1, "bn1": net.bn1, "relu": net.relu, "maxpool": net.maxpool,
            "layer1": net.layer1, "layer2": net.layer2, "layer3": net.layer3, "layer4": net.layer4}


ARCHITECTURES = {
    "resnet9": resnet9_stages,
    "resnet18": lambda spec: torchvision_stages("BasicBlock", [2, 2, 2, 2], spec),
    "resnet50": lambda spec: torchvision_stages("Bottleneck", [3, 4, 6, 3], spec),
}
STEM = ("conv1", "bn1", "relu", "maxpool")


@gin.configurable
class ResNet(nn.Module):
    """A backbone of `ARCHITECTURES`; `forward` gives pooled features B x out_dim."""

    layout_prefix = ""  # torchvision's parameter names are this module's own

    def __init__(self, arch: str, in_channels: int = 3, input_res: int = 32, feat_layer: str | int | None = None,
                 freeze_at_k: int | None = None, out_feats: int | None = None, width: int = 64,
                 prepool_fc: bool | None = None, is_half: bool = False, skip_init_pool: bool | None = None,
                 replace_stride_with_dilation: list[bool] | None = None):
        """`width`: resnet9's first-stage channels (64 in the original); torchvision's ResNets keep theirs."""
        super().__init__()
        if arch not in ARCHITECTURES:
            raise UserError(f"unknown init_resnet.choice {arch!r}; choose from: {', '.join(ARCHITECTURES)}")
        if skip_init_pool is False and arch == "resnet9":
            raise UserError("ResNet.skip_init_pool = False keeps the stem's max-pool of resnet18/50; resnet9 has none: "
                            "leave it unset")
        narrowest = 2 if is_half else 1  # is_half halves the layers' width
        if isinstance(width, bool) or not isinstance(width, int) or width < narrowest:
            raise UserError(f"ResNet.width = {width!r} must be a whole number of channels, at least {narrowest} "
                            f"(64 in the CIFAR original)")
        dilate = replace_stride_with_dilation or [False] * 3
        if not isinstance(dilate, (list, tuple)) or len(dilate) != 3 or not all(isinstance(d, bool) for d in dilate):
            raise UserError(f"ResNet.replace_stride_with_dilation = {replace_stride_with_dilation!r} needs one bool per "
                            "layer after the first, e.g. [False, False, True]")
        if any(dilate) and arch == "resnet18":
            raise UserError("ResNet.replace_stride_with_dilation needs resnet50's bottleneck blocks (torchvision's "
                            "resnet18 blocks cannot dilate): use init_resnet.choice = 'resnet50' or leave it None")
        if freeze_at_k is not None and (isinstance(freeze_at_k, bool) or not isinstance(freeze_at_k, int)
                                        or freeze_at_k < -1):
            raise UserError(f"ResNet.freeze_at_k = {freeze_at_k!r} must be None (nothing frozen), -1 (the stem) or k "
                            ">= 0 (the stem and layers 1 to k + 1)")
        small = input_res <= 64
        spec = StageSpec(in_channels, width, small, bool(is_half),
                         not small if skip_init_pool is None else not skip_init_pool, tuple(dilate))
        for name, module in ARCHITECTURES[arch](spec).items():
            if name != "stem":
                self.add_module(name, module)
        self.stage_names = ["stem" if arch != "resnet9" else "prep"] + [n for n in ("layer1", "layer2", "layer3",
                                                                                     "layer4") if hasattr(self, n)]
        last = self.stage_feature(feat_layer)
        self.stage_names = self.stage_names[: last + 1]
        frozen = 0 if freeze_at_k is None else freeze_at_k + 2  # the stem, then layers 1 to k + 1
        if not 0 <= frozen <= len(self.stage_names):
            raise UserError(f"ResNet.freeze_at_k = {freeze_at_k} freezes the stem and layers 1 to {freeze_at_k + 1}, "
                            f"but {arch} up to {self.stage_names[-1]} has {len(self.stage_names) - 1} layers: choose "
                            f"-1 to {len(self.stage_names) - 2}, or None")
        self.frozen_stages = frozen  # -1: the stem alone
        channels = self._channels(in_channels, input_res)
        if out_feats is not None and (isinstance(out_feats, bool) or not isinstance(out_feats, int) or out_feats < 0):
            raise UserError(f"ResNet.out_feats = {out_feats!r} must be a number of channels, or None (no projection)")
        if isinstance(feat_layer, int) and feat_layer >= 0 and out_feats:  # 2020: a stage's pooled output
            notes.note(f"ResNet.out_feats = {out_feats} is not used with ResNet.feat_layer = {feat_layer}: as in 2020, "
                        "features are that stage's pooled output, unprojected")
            out_feats = None
        if not out_feats:
            self.project: nn.Module = nn.Identity()
        elif prepool_fc is None:
            self.project = nn.Sequential(nn.Conv2d(channels, out_feats, 1, bias=False), nn.BatchNorm2d(out_feats),
                                         nn.ReLU(inplace=True))
        else:  # the 2020 projection, before or after pooling: a linear map commutes with the mean, so one path
            self.project = PerPosition(nn.Linear(channels, out_feats))
        self.out_dim = out_feats or channels
        for module in self._stages(self.frozen_stages):
            module.requires_grad_(False)

    def stage_feature(self, feat_layer: str | int | None) -> int:
        """The index of the last stage to run: a stage name, -1 / None (the last), or a 2020 stage number."""
        if feat_layer is None or feat_layer == -1:
            return len(self.stage_names) - 1
        if isinstance(feat_layer, int) and not isinstance(feat_layer, bool) and 0 <= feat_layer < len(self.stage_names):
            return feat_layer
        if feat_layer in self.stage_names:
            return self.stage_names.index(feat_layer)
        raise UserError(f"ResNet.feat_layer {feat_layer!r} is not a stage of this backbone; choose from: "
                        f"{', '.join(self.stage_names)}, their numbers 0-{len(self.stage_names) - 1}, or -1 (the last)")

    def _stage_modules(self) -> list[nn.Module]:
        return [module for stage in self._stages() for module in stage.modules()]

    def _stages(self, count: int | None = None) -> list[nn.Module]:
        names = self.stage_names[:count]
        return [getattr(self, s) for n in names for s in (STEM if n == "stem" else (n,))]

    @torch.no_grad()
    def _channels(self, in_channels: int, input_res: int) -> int:
        """Channels of the last stage's output: a forward pass of one blank image, or, on the meta
        device (shapes only), the last BatchNorm's width (every stage ends in one; a meta forward
        through BatchNorm would import torch's compiler, seconds before a run's first check)."""
        device = next(self.parameters()).device
        if device.type == "meta":
            return [m for m in self._stage_modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
        probe = torch.zeros(1, in_channels, input_res, input_res, device=device)
        was_training = self.training
        self.eval()
        for module in self._stages():
            probe = module(probe)
        self.train(was_training)
        return probe.shape[1]

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        for module in self._stages(self.frozen_stages):  # frozen stages keep their statistics
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
        return self.project(self.unprojected_map(x))

    def unprojected_map(self, x: torch.Tensor) -> torch.Tensor:
        for module in self._stages():
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))  # global average pool; deterministic on GPUs


class PerPosition(nn.Module):
    """A linear map over the channels of a feature map B x C x H x W, at every position."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, self.linear.weight[:, :, None, None], self.linear.bias)


@gin.configurable
def init_resnet(in_channels: int, input_res: int, choice: str = "resnet9") -> ResNet | ViT:
    """`init_resnet.choice`: the backbone, resnet9, resnet18 or resnet50 (`ResNet.*`), or a
    vision transformer, vit_tiny, vit_small or vit_base (`ViT.*`, see `selfstudy.models.vit`)."""
    if choice in TIMM_NAMES:
        return ViT(choice, in_channels=in_channels, input_res=input_res)
    if choice not in ARCHITECTURES:
        raise UserError(f"unknown init_resnet.choice {choice!r}; choose from: {', '.join([*ARCHITECTURES, *TIMM_NAMES])}")
    return ResNet(choice, in_channels=in_channels, input_res=input_res)
