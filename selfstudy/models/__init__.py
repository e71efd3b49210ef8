"""Models: backbones (`resnet.py`, `vit.py`) and the wrapper that adds heads (`wrapper.py`)."""

from __future__ import annotations

from selfstudy.models.resnet import ARCHITECTURES, ResNet, init_resnet
from selfstudy.models.vit import TIMM_NAMES, ViT
from selfstudy.models.wrapper import ModelOutput, Wrapper


def build_model(in_channels: int, input_res: int, num_classes: int) -> Wrapper:
    """The configured backbone (`init_resnet`, `ResNet`) inside the configured `Wrapper`."""
    return Wrapper(init_resnet(in_channels, input_res), num_classes)


__all__ = ["ARCHITECTURES", "ModelOutput", "ResNet", "TIMM_NAMES", "ViT", "Wrapper", "build_model", "init_resnet"]
