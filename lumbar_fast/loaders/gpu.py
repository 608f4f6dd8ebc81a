"""GPU discovery that never initialises CUDA, and the `--device` choice.

DALI's worker processes must not inherit CUDA state, and even `torch.cuda.is_available()` initialises the
CUDA driver, so the GPUs are counted through NVML (libnvidia-ml, via ctypes), which does not.
"""

from __future__ import annotations

import ctypes
import os

import torch

from lumbar_fast.errors import LumbarFastError

DEVICE_CHOICES = ("auto", "cuda", "cpu")


def _nvml_device_count() -> int:
    """GPUs the NVIDIA driver reports through NVML; 0 without a driver."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    if nvml.nvmlInit_v2() != 0:
        return 0
    try:
        count = ctypes.c_uint(0)
        return count.value if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0 else 0
    finally:
        nvml.nvmlShutdown()


def _visible(count: int) -> int:
    """How many of `count` GPUs CUDA_VISIBLE_DEVICES leaves visible (CUDA stops at its first bad entry)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return count
    n = 0
    for entry in (e.strip() for e in visible.split(",")):
        valid = int(entry) < count if entry.isdigit() else entry.startswith(("GPU-", "MIG-"))
        if not valid:
            break
        n += 1
    return n


def gpu_count() -> int:
    """CUDA GPUs this process could use with torch, counted without initialising CUDA."""
    if not torch.backends.cuda.is_built():
        return 0
    return _visible(_nvml_device_count())


def resolve_device(name: str) -> torch.device:
    """The torch device for `--device auto|cuda|cpu|cuda:N`; a one-line error for CUDA without a GPU."""
    if name == "auto":
        return torch.device("cuda" if gpu_count() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        try:
            device = torch.device(name)
        except RuntimeError:
            raise LumbarFastError(f"unknown device {name!r}; use cuda or cuda:N") from None
        count = gpu_count()
        if (device.index or 0) >= count:
            found = f"{count} GPU(s)" if count else "no CUDA GPU"
            raise LumbarFastError(f"--device {name}: this machine has {found}; use --device cpu or auto")
        return device
    raise LumbarFastError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
