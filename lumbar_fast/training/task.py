"""The contract between the training core and a task (the classifier, the locator).

A task owns what differs between them: what a batch is, the step and its loss, the validation metrics and
predictions, and what a checkpoint holds besides the training state. The core owns the rest (`loop.py`):
the epochs, early stopping, checkpoints, resume, the run folder and its records.
"""

from __future__ import annotations

from typing import Any, Protocol

import pandas as pd
import torch
from torch import nn

from lumbar_fast.runfolder import Panels


class TaskConfig(Protocol):
    """The fields of a task's configuration that the core reads (both configs are dataclasses)."""

    epochs: int
    patience: int
    device: str
    out: str | None
    run_dir: str | None

    def run_name(self, stamp: str) -> str:
        """The name of a new run folder in --out, from the start time `stamp`."""


class TrainingTask(Protocol):
    """One trainable task, built for a run by its `prepare` (every input check before the first file)."""

    config: TaskConfig
    model: nn.Module  # the bare model: its state_dict is what checkpoints hold
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler  # fp16 loss scaling (disabled otherwise); last.pt holds its state
    split: pd.DataFrame  # the study-level split, copied into the run folder as split.csv
    monitor: str  # the validation record key early stopping and best.pt watch
    mode: str  # "min" or "max": which way `monitor` improves
    weights_key: str  # the checkpoint key of the model's state_dict (each task's readers expect their own)
    panels: Panels  # curves.png

    def __enter__(self) -> TrainingTask:
        """Start what lives while epochs run (loaders, baselines)."""

    def __exit__(self, *exc: object) -> None:
        """Stop it."""

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """Train one epoch; its `train_*` record fields (summed over ranks)."""

    def validate(self, epoch: int) -> tuple[dict[str, Any], pd.DataFrame]:
        """The `val_*` record fields (the same on every rank) and the validation predictions table."""

    def checkpoint_meta(self) -> dict[str, Any]:
        """What the task's readers need besides the weights (model name, geometry, config)."""

    def epoch_line(self, record: dict[str, Any]) -> str:
        """The epoch's one line on stdout."""
