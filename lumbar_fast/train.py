"""Training a classifier (`lumbar-fast train`): one per MRI sequence on the ingest cache, the seed recipe made
to learn. `train(config)` starts a run, `resume(run_dir)` continues one from its last.pt to the same result.

The pieces: `classifier/config.py` (arguments), `classifier/items.py` (items, views, controls),
`classifier/steps.py` (model, optimiser, eager and CUDA-graph steps), `classifier/task.py` (the task the
training core in `lumbar_fast/training/` runs: loop, checkpoints, early stopping, resume).
"""

from __future__ import annotations

from pathlib import Path

from lumbar_fast.cache import open_cache
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.task import prepare
from lumbar_fast.training import loop

__all__ = ["TrainConfig", "resume", "train"]


def train(config: TrainConfig) -> Path:
    """Start a new run for `config` (its `auto` values resolved by the recipe and the cache's slices per
    crop); returns its folder."""
    config.check()
    slices = int(open_cache(config.cache).attrs["params"]["channels"])
    return loop.start(config.resolved(slices), prepare)


def resume(run_dir: str | Path) -> Path:
    """Continue a run from its last.pt (model, optimiser, scaler, schedule, early stopping, RNG) to the same
    result as an uninterrupted run; a finished run returns at once."""
    return loop.resume(run_dir, TrainConfig.from_record, prepare)
