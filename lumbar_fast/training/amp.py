"""Mixed precision's one piece of training state: the fp16 gradient scaler, which last.pt saves."""

from __future__ import annotations

import torch


def make_scaler(device: torch.device, amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """fp16 loss scaling, enabled only when autocasting to fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
