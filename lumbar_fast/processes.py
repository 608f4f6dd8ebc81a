"""Worker processes that are safe to start from any parent: each begins as a fresh interpreter (forkserver
where the platform has it, else spawn), never as a fork of a caller that may have initialised CUDA or hold
threads and locks; a script that starts them needs an `if __name__ == "__main__":` guard."""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

#: the start methods that never fork the calling process, in order of preference (forkserver starts each
#: worker as a fork of a clean server process: cheaper than spawn's new interpreter per worker)
SAFE_START_METHODS = ("forkserver", "spawn")


def pool_context() -> BaseContext:
    """The multiprocessing context for every pool of the package."""
    available = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context(next(m for m in SAFE_START_METHODS if m in available))
