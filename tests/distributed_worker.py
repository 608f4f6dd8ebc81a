"""One rank of tests/test_distributed.py's collectives test, in its own light module: the spawned processes
import only this, torch and lumbar_fast.distributed (not the training stack), so they start quickly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from lumbar_fast import distributed
from lumbar_fast.errors import LumbarFastError

WORLD = 2


def refuse() -> None:
    """A step that fails on rank 0 with a user error."""
    raise LumbarFastError("refused on rank 0")


def crash() -> None:
    """A step that fails on rank 0 with an unexpected error (a full disk, a bug)."""
    raise OSError("No space left on device\nwhile writing last.pt")


def collectives(rank: int, port: int, out: str) -> None:
    """Set what torchrun would set, join a real gloo group and write what each helper returned to
    `out`/rank{rank}.json."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")):
        items, = distributed.all_gather_rows(np.arange(rank * 3, rank * 3 + 3 - rank))  # 3 rows, then 2
        verdict = distributed.broadcast({"stop": rank == 1})  # the ranks disagree; rank 0's verdict wins
        norm = torch.nn.BatchNorm1d(2)
        norm.running_mean.fill_(rank)
        distributed.broadcast_buffers(norm)
        errors = []
        for step in (refuse, crash):
            try:
                distributed.on_main(step)
                errors.append("")
            except LumbarFastError as exc:
                errors.append(str(exc))
        sums = distributed.all_reduce_sum(torch.tensor([1.0, rank]))
        result = {"items": items.tolist(), "verdict": verdict, "running_mean": norm.running_mean.tolist(),
                  "errors": errors, "sums": sums.tolist(), "main": distributed.is_main(),
                  "rank": distributed.rank(), "world_size": distributed.world_size()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
