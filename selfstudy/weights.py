"""Backbone weights from other projects' checkpoints, and back out in torchvision's layout.

`Wrapper.pretrained` takes a selfstudy snapshot ("<exp>/<name>") or a path to a checkpoint
file in one of these layouts (`Wrapper.pretrained_format`; 'auto' tells them apart by their
keys and says which it found):

    torchvision   a ResNet-18/50 state dict: conv1.weight, bn1.*, layer1.0.*, ..., fc.*
    moco          MoCo v1/v2: {"state_dict": {"module.encoder_q.conv1.weight", ...}}
    mmselfsup     OpenSelfSup / MMSelfSup: {"state_dict": {"backbone.conv1.weight", ...}}
    encoder       a plain encoder state dict (as ViRB and VPU save): torchvision's names, no fc
                  (a leading "module." from DataParallel is dropped)

Every layout comes down to the encoder in torchvision's names, without the classifier; it
must fit the backbone exactly (ResNet-18/50 keep torchvision's names): a missing or an
unexpected key, or a shape that differs, is an error that names them. Files are read with
`torch.load(weights_only=True)`, so a checkpoint never runs code.
"""

from __future__ import annotations

from typing import Any

import torch

from selfstudy.errors import UserError

LAYOUTS = ("auto", "selfstudy", "torchvision", "moco", "mmselfsup", "encoder")
PREFIXES = {"moco": ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder."),  # v1/v2, v3
            "mmselfsup": ("backbone.",)}


def state_of(data: Any) -> dict[str, Any]:
    """The state dict inside a checkpoint (under "state_dict" or "model" when there is one)."""
    inner = data
    if isinstance(data, dict):
        inner = data.get("state_dict", data.get("model", data) if isinstance(data.get("model"), dict) else data)
    if not isinstance(inner, dict) or not all(isinstance(k, str) for k in inner):
        raise UserError("the checkpoint holds no state dict (a dict of tensors by name)")
    return inner


def detect(data: Any) -> str:
    """The layout of a checkpoint, from its keys."""
    if isinstance(data, dict) and "model" in data and "format" in data:
        return "selfstudy"
    keys = list(state_of(data))
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


def check_fit(weights: dict[str, torch.Tensor], own: dict[str, torch.Tensor], setting: str) -> None:
    """Strict over the backbone: the same keys, the same shapes; the error names what differs."""
    missing = sorted(k for k in set(own) - set(weights) if not k.endswith("num_batches_tracked"))  # older files
    unexpected = sorted(set(weights) - set(own))
    if missing or unexpected:
        parts = [f"{len(found)} {what} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''})"
                 for what, found in (("missing", missing), ("unexpected", unexpected)) if found]
        raise UserError(f"{setting} does not fit this backbone: {'; '.join(parts)} keys; set init_resnet.choice to the "
                        "checkpoint's architecture (resnet18 or resnet50) and leave ResNet.is_half unset, or set "
                        "Wrapper.pretrained_format to its layout")
    for key, tensor in weights.items():
        if tensor.shape != own[key].shape:
            if key == "conv1.weight" and tensor.shape[1] != own[key].shape[1]:
                hint = f"the checkpoint takes {tensor.shape[1]}-channel images, the dataset has {own[key].shape[1]}"
            elif key == "conv1.weight":
                hint = "images of 64 pixels or less get a 3x3 stride-1 stem here: set BaseDataset.input_res above 64"
            else:
                hint = "set init_resnet.choice to the checkpoint's architecture and leave ResNet.is_half unset"
            raise UserError(f"{setting} does not fit this backbone: '{key}' is {tuple(tensor.shape)} in the checkpoint "
                            f"but {tuple(own[key].shape)} here; {hint}")


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
    state = dict(backbone)
    weight, bias = model_state.get("classifier.weight"), model_state.get("classifier.bias")
    if weight is not None and bias is not None and weight.dim() == 2:
        mean, var = model_state.get("feature_norm.running_mean"), model_state.get("feature_norm.running_var")
        if mean is not None and var is not None:  # a probe's standardisation, folded into the linear map
            weight = weight * (var + 1e-5).rsqrt()
            bias = bias - weight @ mean
        state.update({"fc.weight": weight, "fc.bias": bias})
    return state
