"""Worker processes that are safe to start from any parent: each begins as a fresh interpreter (forkserver
where the platform has it, else spawn), never as a fork of a caller that may have initialised CUDA or hold
threads and locks; a script that starts them needs an `if __name__ == "__main__":` guard. Also how a
process that only writes what its workers made hands freed memory back (`large_blocks_mapped`)."""

from __future__ import annotations

import ctypes
import multiprocessing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext

#: the start methods that never fork the calling process, in order of preference (forkserver starts each
#: worker as a fork of a clean server process: cheaper than spawn's new interpreter per worker)
SAFE_START_METHODS = ("forkserver", "spawn")


def pool_context() -> BaseContext:
    """The multiprocessing context for every pool of the package."""
    available = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context(next(m for m in SAFE_START_METHODS if m in available))


#: mallopt's parameter number for the size from which glibc maps a block of its own (malloc.h)
M_MMAP_THRESHOLD = -3
#: glibc's default threshold, and the highest its dynamic threshold climbs to on 64 bits (malloc.h)
MMAP_THRESHOLD_DEFAULT, MMAP_THRESHOLD_CEILING = 128 * 1024, 32 * 1024 * 1024


@contextmanager
def large_blocks_mapped() -> Iterator[None]:
    """Within: every block of 128 KiB or more gets memory of its own, returned to the system when freed
    (glibc only; nothing elsewhere). Meant for a process that only writes: in one that also decodes, its
    arrays mapped anew each time cost ~10 % of its speed. Ingest's writer frees hundreds of compressed
    images of ~40-400 KB a second between small objects that live on (tables, names); glibc's dynamic
    threshold serves such sizes from the heap once one bigger block was freed, and the heap, fragmented,
    kept growing with the study count (30 MiB over a full-scale run) though nothing was held. On leaving,
    the threshold is set where the dynamic one would have climbed: a fixed one stops glibc's adjusting for
    the rest of the process."""
    if _MALLOPT is None:
        yield
        return
    _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_DEFAULT)
    try:
        yield
    finally:
        _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_CEILING)


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library to load by name (Windows), or no mallopt
        return None


_MALLOPT = _mallopt()
