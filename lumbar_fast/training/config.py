"""The arguments every training run has, whatever its task: the data, where the run goes, the split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lumbar_fast import rsna
from lumbar_fast.errors import LumbarFastError


@dataclass
class RunConfig:
    """Sequence, cache, run folder, study-level split, precision, device, seed and progress bar; a task's
    config adds its own fields."""

    sequence: str
    cache: str
    out: str | None = None  # runs folder: the run gets a new sub-folder in it (`run_name`)
    run_dir: str | None = None  # or the run's folder itself
    fold: int = 0
    folds: int = 5
    split_seed: int = 0
    split_file: str | None = None
    amp: str = "auto"  # auto, bf16, fp16, none
    device: str = "auto"
    seed: int = 0
    progress: bool = True

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RunConfig:
        """The config of a run's config.json (TypeError for fields this version does not know)."""
        return cls(**record)

    def check_run(self) -> None:
        """Refuse an unknown sequence, a run folder given twice or not at all, a fold outside the split."""
        rsna.get_sequence(self.sequence)
        if (self.out is None) == (self.run_dir is None):
            raise LumbarFastError("give exactly one of --out RUNS_DIR and --run-dir DIR")
        if not 0 <= self.fold < self.folds:
            raise LumbarFastError(f"--fold {self.fold} is outside 0..{self.folds - 1}")
        where, cache = Path(self.out or self.run_dir).resolve(), Path(self.cache).resolve()
        if where == cache or cache in where.parents:
            raise LumbarFastError(f"the run would be written inside the cache {self.cache}; choose another "
                                  f"{'--out' if self.out else '--run-dir'}")

    @staticmethod
    def check_lr(lr: float) -> None:
        """Refuse a learning rate torch's optimisers refuse with a traceback (negative, NaN, infinite)."""
        if not 0 < lr < math.inf:
            raise LumbarFastError(f"--lr {lr} must be a positive number")


class TaskConfig(Protocol):
    """What the core reads of a task's config besides RunConfig's fields (each task sets its defaults)."""

    out: str | None
    run_dir: str | None
    epochs: int
    patience: int
    monitor: str

    def run_name(self, stamp: str) -> str:
        """The name of a new run folder in --out, from the start time `stamp`."""
