"""Worker processes that are safe to start from any parent: each begins as a fresh interpreter (forkserver
where the platform has it, else spawn), never as a fork of a caller that may have initialised CUDA or hold
threads and locks; a script that starts them needs an `if __name__ == "__main__":` guard. Also how a
process that only writes what its workers made hands freed memory back (`large_blocks_mapped`), and how one
that decodes series after series keeps it for the next (`keep_freed_memory`, `freed_memory_kept`)."""

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


#: mallopt's parameter numbers (malloc.h): the free memory at the heap's top above which glibc hands it back
#: to the system, and the size from which it maps a block of its own
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: glibc's default threshold, and the highest its dynamic threshold climbs to on 64 bits (malloc.h)
MMAP_THRESHOLD_DEFAULT, MMAP_THRESHOLD_CEILING = 128 * 1024, 32 * 1024 * 1024
#: a decoding process's heap serves blocks up to this size and keeps this much freed memory at its top: a
#: series' arrays (a 640-px slice in float32 is 1.6 MB, a whole stack tens of MB) reuse the last series' pages
DECODER_MMAP_THRESHOLD, DECODER_TRIM_THRESHOLD = 64 * 1024 * 1024, 256 * 1024 * 1024


@contextmanager
def large_blocks_mapped() -> Iterator[None]:
    """Within: every block of 128 KiB or more gets memory of its own, returned to the system when freed
    (glibc only; nothing elsewhere). Meant for a process that only writes: in one that also decodes, its
    arrays mapped anew each time cost ~10 % of its speed. Ingest's writer frees hundreds of compressed
    images of ~40-400 KB a second between small objects that live on (tables, names); glibc's dynamic
    threshold serves such sizes from the heap once one bigger block was freed, and the heap, fragmented,
    kept growing with the study count (30 MiB over a full-scale run) though nothing was held. On leaving,
    the thresholds are set where the dynamic ones would have climbed."""
    if _MALLOPT is None:
        yield
        return
    _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_DEFAULT)
    try:
        yield
    finally:
        _thresholds_settled()


def keep_freed_memory() -> None:
    """For a process that decodes series after series (ingest's workers): blocks up to 64 MiB come from its
    heap, and up to 256 MiB freed stays there for the next series, where glibc's dynamic thresholds handed
    each series' arrays back and had the kernel fault in and zero them anew for the next (300 studies of
    256-640 px on 2 cores: 2 workers 39.9-40.7 s against 45.4-48.5 s, 1 worker 66-68 s against 80-88 s,
    system time halved; docs/benchmarks.md). glibc only; nothing elsewhere."""
    if _MALLOPT is not None:
        _MALLOPT(M_MMAP_THRESHOLD, DECODER_MMAP_THRESHOLD)
        _MALLOPT(M_TRIM_THRESHOLD, DECODER_TRIM_THRESHOLD)


@contextmanager
def freed_memory_kept() -> Iterator[None]:
    """`keep_freed_memory` within (ingest converting in its own process); on leaving, the thresholds are set
    where glibc's dynamic ones would have climbed, and the memory kept is handed back."""
    keep_freed_memory()
    try:
        yield
    finally:
        _thresholds_settled()
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)


def _thresholds_settled() -> None:
    """Fixed thresholds where glibc's dynamic ones climb to (the mmap threshold at its ceiling, the trim
    threshold twice that, as glibc sets them); fixed, glibc no longer adjusts them in this process."""
    if _MALLOPT is not None:
        _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_CEILING)
        _MALLOPT(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_CEILING)


def _libc_function(name: str) -> Callable[..., int] | None:
    """The C library's function `name`, or None where there is none."""
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):  # no C library to load by name (Windows), or not glibc's
        return None


_MALLOPT = _libc_function("mallopt")
_MALLOC_TRIM = _libc_function("malloc_trim")
