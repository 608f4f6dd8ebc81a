"""The epoch loop every task trains with: start a run, resume one, and fit from where it stands (its kill
point for the resume tests is a test hook: lumbar_fast/testhooks.py)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lumbar_fast import distributed, testhooks
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.runfolder import LAST, SPLIT, RunFolder
from lumbar_fast.training.checkpoint import RunState, commit_epoch, restore
from lumbar_fast.training.config import TaskConfig
from lumbar_fast.training.records import plain
from lumbar_fast.training.stopping import EarlyStopping, update_everywhere
from lumbar_fast.training.task import TrainingTask

C = TypeVar("C", bound=TaskConfig)
Prepare = Callable[[C, RunFolder], TrainingTask]


def new_run_folder(config: TaskConfig) -> RunFolder:
    """The run's folder: --run-dir itself, or a new folder in --out named by the task and the time."""
    if config.run_dir is not None:
        return RunFolder.create(Path(config.run_dir))
    return RunFolder.create(Path(config.out) / config.run_name(time.strftime("%Y%m%d-%H%M%S")))


def start(config: C, prepare: Prepare) -> Path:
    """A new run of a checked config: its folder (one for every rank), the task, config.json, then fit. The
    cache and split file are recorded by absolute paths, which resume, evaluate and predict find from any
    folder; symbolic links are kept, since the split and the .npy export are made beside the path given."""
    config = dataclasses.replace(config, cache=os.path.abspath(config.cache),
                                 split_file=os.path.abspath(config.split_file) if config.split_file else None)
    with distributed.process_group(resolve_device(config.device)):
        run = distributed.on_main(new_run_folder, config)
        task = prepare(config, run)
        distributed.on_main(run.write_config, dataclasses.asdict(config), task.cache_settings.record())
        return fit(run, task, RunState(EarlyStopping(task.mode, config.patience)))


def resume(run_dir: str | Path, read_config: Callable[[dict[str, Any]], C], prepare: Prepare,
           **session: Any) -> Path:
    """Continue a run from its last.pt (every rank loads it) to the same result as an uninterrupted run; a
    finished run only repeats the task's closing step (`TrainingTask.finish`). `session` overrides how the
    run is carried out (device, progress), never what it is."""
    run = RunFolder.open_existing(Path(run_dir))
    record = run.read_config()
    try:
        config = dataclasses.replace(read_config(record), **session)
    except TypeError as exc:
        kind = record.get("kind", "classifier")
        raise LumbarFastError(f"{run_dir} is a {kind} run of another version or another command ({exc}): "
                              "`train --resume` continues classifier runs, `train-locator --resume` locator "
                              "runs") from None
    with distributed.process_group(resolve_device(config.device)):
        state = run.load_checkpoint(LAST)
        task = prepare(config, run)
        run_state = restore(run, task, state)
        if run_state.start_epoch >= config.epochs or run_state.stopper.should_stop:
            line = (f"{run.path} had finished ({run_state.start_epoch} epochs, the best epoch "
                    f"{run_state.stopper.best_epoch + 1}): nothing left to train; its closing step is "
                    "repeated")
            distributed.on_main(lambda: print(line, flush=True))
        return fit(run, task, run_state)


def fit(run: RunFolder, task: TrainingTask, run_state: RunState) -> Path:
    """Train from run_state.start_epoch to the last epoch or an early stop, committing every epoch; then the
    task's closing step (a resumed finished run repeats only that)."""
    distributed.on_main(write_split, run, task)
    with task:
        for epoch in range(run_state.start_epoch, task.config.epochs):
            if run_state.stopper.should_stop:
                break
            lr = float(task.optimizer.param_groups[0]["lr"])  # now: CUDA graphs' tensor is stepped in place
            started = time.perf_counter()
            train_metrics = task.train_epoch(epoch)
            distributed.broadcast_buffers(task.model)  # every rank validates rank 0's model, the saved one
            val_metrics, predictions = task.validate(epoch)
            task.scheduler.step()
            improved = update_everywhere(run_state.stopper, float(val_metrics[task.monitor]), epoch)
            record = {"epoch": epoch + 1, "lr": lr, **train_metrics, **val_metrics, "best": improved,
                      "epoch_seconds": time.perf_counter() - started}
            run_state.records.append(plain(record))
            distributed.on_main(commit_epoch, run, task, run_state, predictions if improved else None)
            testhooks.kill_after_epochs(epoch + 1)
    distributed.on_main(run.write_metrics, run_state.records, task.kind.panels)  # the curves, drawn last
    if run_state.stopper.best_epoch < 0:
        raise LumbarFastError(f"no epoch gave a finite {task.monitor} (training diverged: its losses are in "
                              f"{run.path}); try a lower --lr")
    distributed.on_main(task.finish, run)
    return run.path


def write_split(run: RunFolder, task: TrainingTask) -> None:
    """split.csv, once: a resumed run keeps the one it started with."""
    if not run.file(SPLIT).is_file():
        run.write_table(SPLIT, task.split)
