"""Mixed precision (`session.precision`): autocast dtype and loss scaling.

'auto' is bf16 autocast on a CUDA GPU that supports it and fp32 elsewhere; 'bf16' and
'fp16' force autocast (fp16 with a gradient scaler); 'fp32' turns it off. Weights and
optimizer state stay fp32 in these modes. 'fp64' runs weights, optimizer state and
activations in float64 (the losses' last steps stay fp32): slow, for checking numerics, e.g.
that a trial of several workers gives one worker's numbers, which training in fp32 blurs.
"""

from __future__ import annotations

import torch

from selfstudy.errors import UserError

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": None}


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in float32 for a loss (from bf16/fp16 under autocast), or float64 if it is."""
    return x if x.dtype == torch.float64 else x.float()


def weight_dtype(choice: str) -> torch.dtype:
    """The dtype of weights and activations for `session.precision = choice`."""
    return torch.float64 if choice == "fp64" else torch.float32


def autocast_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `session.precision = choice` on `device` (None: fp32)."""
    if choice == "auto":
        bf16_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16_gpu else None
    if choice not in DTYPES:
        raise UserError(f"unknown session.precision {choice!r}; choose from: auto, {', '.join(DTYPES)}")
    if choice == "fp16" and device.type != "cuda":
        raise UserError("session.precision = 'fp16' needs a CUDA GPU; use 'bf16' or 'fp32' on the CPU")
    return DTYPES[choice]
