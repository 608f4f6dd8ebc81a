"""The contract between the training core and a task (the classifier, the locator).

A task owns what differs between them: what a batch is, the step and its loss, the validation metrics and
predictions, and what a checkpoint holds besides the training state. The core owns the rest (`loop.py`):
the epochs, early stopping, checkpoints, resume, the run folder and its records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from lumbar_fast.cache import ImageSettings
from lumbar_fast.runfolder import Panels, RunFolder
from lumbar_fast.training.amp import make_scaler
from lumbar_fast.training.config import TaskConfig


@dataclass(frozen=True)
class TaskKind:
    """How a kind of task's run folder reads: curves.png's panels, and what --monitor may watch."""

    panels: Panels
    monitors: dict[str, tuple[str, str]]  # --monitor -> (validation record key, "min" | "max")


class TrainingTask(ABC):
    """One trainable task, built for a run by its `prepare` (every input check before the first file)."""

    kind: TaskKind

    def __init__(self, config: TaskConfig, device: torch.device, amp_dtype: torch.dtype | None,
                 split: pd.DataFrame, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, cache_settings: ImageSettings) -> None:
        self.config, self.device, self.amp_dtype = config, device, amp_dtype
        self.cache_settings = cache_settings  # of the training cache: config.json and checkpoints record them
        self.split = split  # the study-level split, copied into the run folder as split.csv
        self.model = model  # the bare model: its state_dict is what checkpoints hold
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scaler = make_scaler(device, amp_dtype)  # fp16 loss scaling; last.pt holds its state
        self.monitor, self.mode = self.kind.monitors[config.monitor]  # what early stopping and best.pt watch

    def __enter__(self) -> TrainingTask:
        """Start what lives while epochs run (loaders, baselines)."""
        return self

    def __exit__(self, *exc: object) -> None:  # noqa: B027 (a hook: a task with nothing to stop keeps it)
        """Stop it."""

    @abstractmethod
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; its `train_*` record fields (summed over ranks)."""

    @abstractmethod
    def validate(self, epoch: int) -> tuple[dict[str, Any], pd.DataFrame]:
        """The `val_*` record fields (the same on every rank) and the validation predictions table."""

    @abstractmethod
    def checkpoint_meta(self) -> dict[str, Any]:
        """What the task's readers need besides the weights (model name, geometry, config)."""

    @abstractmethod
    def epoch_line(self, record: dict[str, Any]) -> str:
        """The epoch's one line on stdout."""

    def finish(self, run: RunFolder) -> None:  # noqa: B027 (a hook: a task with nothing to add keeps it)
        """After the last epoch, on rank 0: what the task derives from the finished run (calibration)."""
