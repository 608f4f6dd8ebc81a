"""Multi-process training under torchrun: the process group, each rank's device, and the few collectives the
training loop needs (exact-count gathers, sums, rank 0's decisions handed to every rank).

torchrun starts one process per GPU and tells each its place through environment variables (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Without them every function here is the single-process
identity, so the training loop calls them unconditionally. Backend: NCCL on GPUs, gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from lumbar_fast.errors import LumbarFastError, typed_line
from lumbar_fast.loaders.gpu import gpu_count

T = TypeVar("T")

#: torchrun's environment variables; their presence marks a launched process
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True in a process that torchrun (or another launcher setting its variables) started as a rank."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def active() -> bool:
    """True while a process group of more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the process group's, else torchrun's RANK (before or after the group), else 0."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes training together: the group's, else torchrun's WORLD_SIZE, else 1."""
    return dist.get_world_size() if active() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """True on the rank that alone writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK): the GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: torch.device) -> torch.device:
    """The device this rank computes on: a CUDA device becomes the local rank's GPU (made current, so NCCL
    and DALI use it too); the CPU stays the CPU."""
    if device.type != "cuda" or not launched():
        return device
    device = torch.device("cuda", local_rank())
    torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the duration of the block (NCCL for a CUDA device, gloo for the
    CPU), and leave it afterwards; a no-op in a process that torchrun did not start."""
    if not launched() or dist.is_initialized():
        yield
        return
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise LumbarFastError(f"distributed launch without {', '.join(missing)}: start with torchrun")
    device = rank_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def relaunch(nproc: int, device: torch.device, args: list[str]) -> int:
    """Run `lumbar-fast args...` as `nproc` processes on this machine under torchrun (the `--nproc`
    shortcut for `torchrun --standalone --nproc-per-node N -m lumbar_fast ...`); returns its exit code."""
    if launched():
        raise LumbarFastError("--nproc inside a torchrun launch: give the process count to torchrun only")
    if device.type == "cuda" and nproc > gpu_count():
        raise LumbarFastError(f"--nproc {nproc} needs {nproc} GPUs; this machine has {gpu_count()}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "lumbar_fast", *args]
    return subprocess.run(command, check=False).returncode


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel when several processes train (gradients averaged across ranks at
    each backward), else `model` itself."""
    if not active():
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast(value: T) -> T:
    """Rank 0's `value` (any picklable object) on every rank: one decision that all ranks obey."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(function: Callable[..., T], *args: Any) -> T:
    """Call `function(*args)` on rank 0 only and return its result on every rank. Under torchrun any
    exception raised there ends every rank with the same one-line LumbarFastError, so that no rank waits
    for one that has failed; a single process calls `function` as it is."""
    if not active():
        return function(*args)
    result, error = None, None
    if is_main():
        try:
            result = function(*args)
        except Exception as exc:  # every kind: the other ranks would wait for rank 0 forever
            error = str(exc) if isinstance(exc, LumbarFastError) else f"rank 0 failed: {typed_line(exc)}"
    result, error = broadcast((result, error))
    if error is not None:
        raise LumbarFastError(error)
    return result


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of `values` over the ranks (a copy; `values` itself when not distributed)."""
    if not active():
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def all_gather_rows(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array concatenated over the ranks in rank order, on every rank: ranks may hold different numbers
    of rows (exact counts, no padding), so every validation item counts exactly once."""
    if not active():
        return arrays
    gathered: list[tuple[np.ndarray, ...] | None] = [None] * world_size()
    dist.all_gather_object(gathered, arrays)
    return tuple(np.concatenate(parts) for parts in zip(*gathered, strict=True))


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP keeps parameters equal but
    each rank updates its buffers with its own last batch: after this every rank holds rank 0's model,
    the one rank 0 saves."""
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)
