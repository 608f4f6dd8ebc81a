"""The package's processes: worker pools that are safe to start from any parent (each worker begins as a fresh
interpreter, forkserver where the platform has it, else spawn, never as a fork of a caller that may have
initialised CUDA or hold threads and locks; a script that starts them needs an `if __name__ == "__main__":`
guard), and freed memory handed back by a long-running process."""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
from multiprocessing.context import BaseContext

#: the start methods that never fork the calling process, in order of preference (forkserver starts each
#: worker as a fork of a clean server process: cheaper than spawn's new interpreter per worker)
SAFE_START_METHODS = ("forkserver", "spawn")


def pool_context() -> BaseContext:
    """The multiprocessing context for every pool of the package."""
    available = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context(next(m for m in SAFE_START_METHODS if m in available))


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc's `malloc_trim`; nothing where there is none): a
    process that allocates and frees many large transient buffers, as the ingest writer does, otherwise keeps
    a resident size that grows with the length of its run rather than with what it holds."""
    trim = getattr(_loaded_symbols(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def _loaded_symbols() -> ctypes.CDLL | None:
    """The symbols already loaded into this process (the C library's among them), None where unsupported."""
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):
        return None
