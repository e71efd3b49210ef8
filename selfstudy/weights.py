"""Backbone weights from other projects' checkpoints, and back out in torchvision's or timm's layout.

`Wrapper.pretrained` takes a selfstudy snapshot ("<exp>/<name>") or a path to a checkpoint
file in one of these layouts (`Wrapper.pretrained_format`; 'auto' tells them apart by their
keys and says which it found):

    torchvision   a ResNet-18/50 state dict: conv1.weight, bn1.*, layer1.0.*, ..., fc.*
    moco          MoCo v1/v2: {"state_dict": {"module.encoder_q.conv1.weight", ...}}
    mmselfsup     OpenSelfSup / MMSelfSup: {"state_dict": {"backbone.conv1.weight", ...}}
    encoder       a plain encoder state dict (as ViRB and VPU save): torchvision's names, no fc
                  (a leading "module." from DataParallel is dropped)
    timm          a timm VisionTransformer state dict: cls_token, pos_embed, patch_embed.*,
                  blocks.*, norm.*, head.* (dropped)
    dino          a DINO checkpoint: {"teacher": {"backbone.cls_token", ..., "head.*"}} (its
                  teacher, as DINO evaluates it), or its released backbone (timm's names)
    mae           an MAE checkpoint: {"model": {"cls_token", ..., "decoder_*", "mask_token"}}
                  (the encoder, without the decoder)

Every layout comes down to the encoder in torchvision's names (a ResNet) or timm's (a ViT),
without the classifier; it must fit the backbone exactly (ResNet-18/50 keep torchvision's
names, ViTs timm's): a missing or an
unexpected key, or a shape that differs, is an error that names them. Files are read with
`torch.load(weights_only=True)`, so a checkpoint never runs code.
"""

from __future__ import annotations

from typing import Any

import torch

from selfstudy.errors import UserError

LAYOUTS = ("auto", "selfstudy", "torchvision", "moco", "mmselfsup", "encoder", "timm", "dino", "mae")
VIT_PREFIXES = ("module.backbone.", "backbone.", "module.")  # DINO's student and teacher, DataParallel
VIT_DROPPED = ("head.", "decoder_", "mask_token")  # DINO's projection head, MAE's decoder
PREFIXES = {"moco": ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder."),  # v1/v2, v3
            "mmselfsup": ("backbone.",)}


def state_of(data: Any) -> dict[str, Any]:
    """The state dict inside a checkpoint (under "state_dict" or "model" when there is one)."""
    inner = data
    if isinstance(data, dict) and isinstance(data.get("teacher"), dict):  # DINO's training checkpoint
        inner = data["teacher"]
    elif isinstance(data, dict):
        inner = data.get("state_dict", data.get("model", data) if isinstance(data.get("model"), dict) else data)
    if not isinstance(inner, dict) or not all(isinstance(k, str) for k in inner):
        raise UserError("the checkpoint holds no state dict (a dict of tensors by name)")
    return inner


def detect(data: Any) -> str:
    """The layout of a checkpoint, from its keys."""
    if isinstance(data, dict) and "model" in data and "format" in data:
        return "selfstudy"
    keys = list(state_of(data))
    if "cls_token" in vit_keys(keys):
        if isinstance(data, dict) and "teacher" in data or any(k.startswith("backbone.") for k in keys):
            return "dino"
        return "mae" if any(k.startswith(("decoder_", "mask_token")) for k in keys) else "timm"
    for layout, prefixes in PREFIXES.items():
        if any(k.startswith(prefixes) for k in keys):
            return layout
    plain = {k.removeprefix("module.") for k in keys}
    if "conv1.weight" in plain:
        return "torchvision" if "fc.weight" in plain else "encoder"
    shown = ", ".join(sorted({".".join(k.split(".")[:2]) for k in keys})[:6])
    raise UserError(f"cannot tell the layout of the checkpoint (its keys start with: {shown}): set "
                    f"Wrapper.pretrained_format to one of {', '.join(LAYOUTS[1:])}")


def encoder_state(data: Any, layout: str) -> dict[str, torch.Tensor]:
    """The encoder's weights in torchvision's names, without the classifier (fc)."""
    state = state_of(data)
    if layout in ("timm", "dino", "mae"):
        state = dict(zip(vit_keys(state), state.values()))
        return {k: v for k, v in state.items() if not k.startswith(VIT_DROPPED) and torch.is_tensor(v)}
    if layout in PREFIXES:
        prefix = next((p for p in PREFIXES[layout] if any(k.startswith(p) for k in state)), PREFIXES[layout][0])
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise UserError(f"the checkpoint has no '{prefix}*' keys, so it is not in the {layout} layout: set "
                            "Wrapper.pretrained_format = 'auto' or the layout it has")
    elif layout in ("torchvision", "encoder"):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    else:
        raise UserError(f"unknown Wrapper.pretrained_format {layout!r}; choose from: {', '.join(LAYOUTS)}")
    return {k: v for k, v in state.items() if not k.startswith("fc.") and torch.is_tensor(v)}


def vit_keys(keys: Any) -> list[str]:
    """Keys without the prefix of DINO's backbone or DataParallel (the first that any key has)."""
    keys = list(keys)
    prefix = next((p for p in VIT_PREFIXES if any(k.startswith(p + "cls_token") for k in keys)), "")
    return [k.removeprefix(prefix) for k in keys]


def check_fit(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor], setting: str, prefix: str = "") -> None:
    """Strict over the backbone: the same keys, the same shapes; the error names what differs
    (without the backbone's `prefix`: in the checkpoint's names)."""
    missing = sorted(k.removeprefix(prefix) for k in set(own) - set(weights)
                     if not k.endswith("num_batches_tracked"))  # older files
    unexpected = sorted(k.removeprefix(prefix) for k in set(weights) - set(own))
    vit = bool(prefix)
    if missing or unexpected:
        parts = [f"{len(found)} {what} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
                 for what, found in (("missing", missing), ("unexpected", unexpected)) if found]
        arch = ("checkpoint's ViT (vit_tiny, vit_small or vit_base) and ViT.depth to its blocks" if vit else
                "checkpoint's architecture (resnet18 or resnet50) and leave ResNet.is_half unset")
        raise UserError(f"{setting} does not fit this backbone: {'; '.join(parts)} keys; set init_resnet.choice to the "
                        f"{arch}, or set Wrapper.pretrained_format to its layout")
    for key, tensor in weights.items():
        if tensor.shape != own[key].shape:
            raise UserError(f"{setting} does not fit this backbone: '{key.removeprefix(prefix)}' is "
                            f"{tuple(tensor.shape)} in the checkpoint but {tuple(own[key].shape)} here; "
                            f"{shape_hint(key.removeprefix(prefix), tensor, own[key], vit)}")


def shape_hint(key: str, theirs: torch.Tensor, ours: torch.Tensor, vit: bool) -> str:
    """What to set so that a checkpoint's tensor `key` takes the backbone's shape."""
    if vit and key in ("pos_embed", "patch_embed.proj.weight"):
        return ("the checkpoint's patches or image size differ: set ViT.patch_size and BaseDataset.input_res to the "
                "checkpoint's (e.g. 16 and 224)")
    if vit:
        return "set init_resnet.choice to the checkpoint's ViT (vit_tiny, vit_small or vit_base)"
    if key == "conv1.weight" and theirs.shape[1] != ours.shape[1]:
        return f"the checkpoint takes {theirs.shape[1]}-channel images, the dataset has {ours.shape[1]}"
    if key == "conv1.weight":
        return "images of 64 pixels or less get a 3x3 stride-1 stem here: set BaseDataset.input_res above 64"
    return "set init_resnet.choice to the checkpoint's architecture and leave ResNet.is_half unset"


def torchvision_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A selfstudy model's ResNet-18/50 backbone (and its linear classifier, as fc, when it sits
    on the backbone's features) in torchvision's names."""
    backbone = {k.removeprefix("backbone."): v for k, v in model_state.items() if k.startswith("backbone.")}
    if "prep.0.weight" in backbone:
        raise UserError("this snapshot holds a ResNet-9, which has no torchvision counterpart: export ResNet-18/50 "
                        "backbones (init_resnet.choice)")
    if any(k.startswith("project.") for k in backbone):
        raise UserError("this snapshot's backbone ends in a projection (ResNet.out_feats), which torchvision's ResNet "
                        "has not: export a backbone trained without it")
    if "net.cls_token" in backbone:
        raise UserError("this snapshot holds a ViT: it exports in timm's layout (misc/export_backbone.py does so)")
    return {**backbone, **classifier_state(model_state, "fc.")}


def timm_state(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A selfstudy model's ViT backbone (and its linear classifier, as head, when it sits on the
    backbone's features) in timm's names: it loads strictly into `timm.create_model` of the
    backbone's `timm_config` (num_classes: the classifier's outputs, or 0 without one)."""
    prefix = "backbone.net."
    backbone = {k.removeprefix(prefix): v for k, v in model_state.items() if k.startswith(prefix)}
    if not backbone:
        raise UserError("this snapshot holds a ResNet, not a ViT: it exports in torchvision's layout")
    return {**backbone, **classifier_state(model_state, "head.")}


def classifier_state(model_state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The linear classifier on the pooled features as `name`weight and `name`bias (none when
    it is not linear), a probe's standardisation folded into it."""
    weight, bias = model_state.get("classifier.weight"), model_state.get("classifier.bias")
    if weight is None or bias is None or weight.dim() != 2:
        return {}
    mean, var = model_state.get("feature_norm.running_mean"), model_state.get("feature_norm.running_var")
    if mean is not None and var is not None:  # a probe's standardisation, folded into the linear map
        weight = weight * (var + 1e-5).rsqrt()
        bias = bias - weight @ mean
    return {f"{name}weight": weight, f"{name}bias": bias}
