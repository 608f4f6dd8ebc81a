"""What the core saves after each epoch (best.pt, last.pt) and restores on resume, for any task: the model,
optimiser, schedule, AMP scaler, early stopping, RNG states and every epoch's record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.runfolder import BEST, LAST, PREDICTIONS, RunFolder
from lumbar_fast.training.rng import rng_state, set_rng_state
from lumbar_fast.training.stopping import EarlyStopping
from lumbar_fast.training.task import TrainingTask

#: the checkpoint key of the model's state_dict, for every task
WEIGHTS = "model"


@dataclass
class RunState:
    """Where a run stands: early stopping, the records of the epochs done, the first epoch still to run."""

    stopper: EarlyStopping
    records: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0


def meta(task: TrainingTask) -> dict[str, Any]:
    """What every checkpoint holds besides the weights and training state: the task's meta and the settings
    of the cache it trains on (which a cache must match to be predicted by the run)."""
    return {**task.checkpoint_meta(), "cache_settings": task.cache_settings.record()}


def last_state(task: TrainingTask, run_state: RunState) -> dict[str, Any]:
    """last.pt: everything `resume` needs to continue exactly where the latest epoch ended."""
    return {**meta(task), "epoch": run_state.records[-1]["epoch"],
            WEIGHTS: task.model.state_dict(), "optimizer": task.optimizer.state_dict(),
            "scheduler": task.scheduler.state_dict(), "scaler": task.scaler.state_dict(),
            "early_stopping": run_state.stopper.state_dict(), "rng": rng_state(),
            "records": run_state.records}


def commit_epoch(run: RunFolder, task: TrainingTask, run_state: RunState,
                 best_predictions: pd.DataFrame | None) -> None:
    """Rank 0's files after an epoch: best.pt and the validation predictions when it improved (predictions
    given), last.pt, metrics and, when due, curves (`fit` draws them at the end); then the epoch's line on
    stdout."""
    record = run_state.records[-1]
    if best_predictions is not None:
        run.save_checkpoint(BEST, {**meta(task), "epoch": record["epoch"],
                                   WEIGHTS: task.model.state_dict(), "metrics": record})
        run.write_table(PREDICTIONS, best_predictions)
    run.save_checkpoint(LAST, last_state(task, run_state))
    run.write_metrics(run_state.records, task.kind.panels, final=False)
    print(task.epoch_line(record), flush=True)


def restore(run: RunFolder, task: TrainingTask, state: dict[str, Any]) -> RunState:
    """Put last.pt's training state into a freshly prepared task; where the run stands, to continue from."""
    try:
        task.model.load_state_dict(state[WEIGHTS])
        load_optimizer_state(task.optimizer, state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise LumbarFastError(f"{run.file(LAST)} does not fit this run's model: {exc}") from None
    task.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"]:  # empty from a run without fp16 (CPU, bf16): resumed in fp16, the scale starts anew
        task.scaler.load_state_dict(state["scaler"])
    stopper = EarlyStopping(task.mode, task.config.patience)
    stopper.load_state_dict(state["early_stopping"])
    set_rng_state(state["rng"])
    return RunState(stopper, list(state["records"]), state["epoch"])


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an optimiser's state (read onto the CPU); a tensor learning rate goes back to its parameters'
    device, where a captured step (capturable Adam) reads it."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = group["lr"].to(group["params"][0].device)
