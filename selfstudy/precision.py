"""Mixed precision (`session.precision`): autocast dtype and loss scaling.

'auto' is bf16 autocast on a CUDA GPU that supports it and fp32 elsewhere; 'bf16' and
'fp16' force autocast (fp16 with a gradient scaler); 'fp32' turns it off. Weights and
optimizer state stay fp32 in every mode.
"""

from __future__ import annotations

import torch

from selfstudy.errors import UserError

DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
