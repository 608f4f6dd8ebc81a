"""The one writer of the memory-mapped .npy arrays that loader workers read (cache exports, slice images)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lumbar_fast.runfolder import atomic_write


def item_shape(path: str | Path) -> tuple[int, ...]:
    """The shape of one item of an .npy image array, (S, S, C) for crops: read from its header alone."""
    return tuple(np.load(path, mmap_mode="r").shape[1:])


def write_npy(path: Path, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> None:
    """A uint8 .npy of `shape` that `fill` fills through a memory map; it appears atomically, so a reader
    never sees a partial array."""
    def write(tmp: Path) -> None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        fill(array)
        array.flush()
        del array

    atomic_write(path, write)
