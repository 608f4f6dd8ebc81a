"""Test hooks: every place where an environment variable changes what production code does, for the tests
alone. Each is off unless its variable is set; none is read anywhere else.

- `LUMBAR_FAST_KILL_AFTER_EPOCHS=N` (KILL_AFTER_EPOCHS_ENV): the training loop SIGKILLs its process right
  after committing epoch N's files (`training/loop.py`): the kill-and-resume tests' crash at a known point,
  no polling (tests/crashes.py).
- `LUMBAR_FAST_INGEST_KILL_AFTER=N` (INGEST_KILL_AFTER_ENV): ingest's writer SIGKILLs its process after
  appending N series (`ingest/consolidate.py`): the ingest kill-and-resume tests (tests/test_ingest.py).
- `LUMBAR_FAST_ITEM_LOG=DIR` (ITEM_LOG_ENV): each rank of a classifier run appends the training items of
  every epoch to `DIR/items-rank{r}.jsonl` (`classifier/task.py`): the multi-process coverage tests
  (tests/test_distributed.py).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

KILL_AFTER_EPOCHS_ENV = "LUMBAR_FAST_KILL_AFTER_EPOCHS"
INGEST_KILL_AFTER_ENV = "LUMBAR_FAST_INGEST_KILL_AFTER"
ITEM_LOG_ENV = "LUMBAR_FAST_ITEM_LOG"


def kill_after_epochs(epochs_committed: int) -> None:
    """SIGKILL this process once KILL_AFTER_EPOCHS_ENV's number of epochs is committed."""
    if os.environ.get(KILL_AFTER_EPOCHS_ENV) == str(epochs_committed):
        os.kill(os.getpid(), signal.SIGKILL)


def ingest_kill_after() -> int:
    """The series after which ingest's writer kills its process (INGEST_KILL_AFTER_ENV; 0: never)."""
    return int(os.environ.get(INGEST_KILL_AFTER_ENV, 0))


def kill_ingest(appended: int, kill_after: int) -> None:
    """SIGKILL this process when the writer has appended `kill_after` series (`ingest_kill_after`)."""
    if appended == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)


def log_items(epoch: int, rank: int, world_size: int, batches: list) -> None:
    """Append one rank's training items of `epoch` (`batches`: its batches' item tensors) to the item log,
    when ITEM_LOG_ENV names a folder."""
    folder = os.environ.get(ITEM_LOG_ENV)
    if not folder:
        return
    import torch

    items = torch.cat(batches).tolist() if batches else []
    record = {"epoch": epoch, "rank": rank, "world_size": world_size, "items": items}
    with open(Path(folder) / f"items-rank{rank}.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")
