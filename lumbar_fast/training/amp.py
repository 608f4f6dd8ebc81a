"""Mixed precision: the autocast dtype a device gets (`--amp`, for training and inference alike), and its one
piece of training state, the fp16 gradient scaler, which last.pt saves."""

from __future__ import annotations

import torch


def make_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16 loss scaling, enabled only when autocasting to fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


def amp_dtype_for(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: `auto` is bf16 on Ampere or newer, fp16 on older GPUs and none on CPU."""
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
