"""Training loop: one classifier per MRI sequence on the ingest cache, the seed recipe made to learn.

`train(config)` starts a run, `resume(run_dir)` continues one from its last.pt to the same result; the CLI
(`lumbar-fast train`) is a thin wrapper. The seed's structure: cross-entropy, Adam (torch's default lr
1e-3), StepLR(step 2, gamma 0.1), early stopping with patience 3, at most 5 epochs; augmentation, class
weights and the early-stopping monitor come from the recipe (`lumbar_fast.recipes`: measured per-sequence
defaults, or the seed's).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from lumbar_fast import distributed, recipes, rsna
from lumbar_fast.cache import CacheReader, open_cache
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.inference import amp_dtype_for, predict_items, resolve_device
from lumbar_fast.loaders import AugmentConfig, LoaderConfig, build_loader, normalisation_stats
from lumbar_fast.metrics import classification_summary
from lumbar_fast.model import create_model
from lumbar_fast.runfolder import BEST, LAST, PREDICTIONS, SPLIT, RunFolder
from lumbar_fast.split import load_or_create_split, train_val_studies

VIEWS = ("level", "slice")
MONITORS = {"accuracy": "max", "loss": "min", "rsna": "min"}
CLASS_WEIGHTINGS = ("none", "metric", "inverse")
AMP_MODES = ("auto", "bf16", "fp16", "none")
#: negative controls, run by the real loop: the pipeline must NOT learn under them
CONTROLS = ("none", "shuffled-labels", "level-off")
#: the whole-slice view's image array, built once per run from the cache's stacks
SLICE_IMAGES = "slice_images.npy"
#: debugging and tests: a folder where each rank appends the training items of every epoch it trains to
#: `items-rank{r}.jsonl` (the loop's own record of which items each rank saw)
ITEM_LOG_ENV = "LUMBAR_FAST_ITEM_LOG"


@dataclass
class TrainConfig:
    """Every argument of a run; stored in config.json, so `resume` rebuilds the identical run from it."""

    sequence: str
    cache: str
    out: str | None = None  # runs folder: the run gets a sub-folder named by sequence, view, fold, time
    run_dir: str | None = None  # or the run's folder itself
    fold: int = 0
    folds: int = 5
    split_seed: int = 0
    split_file: str | None = None
    model: str = "tf_efficientnetv2_s"
    weights: str | None = None
    pretrained: bool = True
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    step_size: int = 2
    gamma: float = 0.1
    patience: int = 3
    recipe: str = "default"  # where the `auto` values below come from (lumbar_fast.recipes)
    monitor: str = recipes.AUTO
    class_weights: str = recipes.AUTO
    amp: str = "auto"
    cuda_graphs: bool = False
    compile: bool = False
    view: str = "level"
    control: str = "none"
    augment: str = recipes.AUTO  # none, all, or a comma list of recipes.AUGMENTATIONS
    shift: float = AugmentConfig.shift
    loader: str = "auto"
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    limit_batches: int | None = None
    progress: bool = True

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainConfig:
        """The config of a run's config.json (an earlier version's boolean augment read as such)."""
        if "augment" in record:
            record = {**record, "augment": recipes.recorded_augment(record["augment"])}
        return cls(**record)

    def resolved(self) -> TrainConfig:
        """A copy with every `auto` replaced by the recipe's value for the sequence (what config.json
        records)."""
        rsna.get_sequence(self.sequence)
        chosen = recipes.resolve(self.recipe, self.sequence, self.augment, self.class_weights, self.monitor)
        return dataclasses.replace(self, augment=chosen.augment, class_weights=chosen.class_weights,
                                   monitor=chosen.monitor)

    def check(self) -> None:
        """Refuse inconsistent arguments with one line each, before any work starts."""
        rsna.get_sequence(self.sequence)
        auto = (recipes.AUTO,)
        choices = {"view": VIEWS, "monitor": (*MONITORS, *auto), "class_weights": (*CLASS_WEIGHTINGS, *auto),
                   "amp": AMP_MODES, "control": CONTROLS, "recipe": recipes.RECIPES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LumbarFastError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if (self.out is None) == (self.run_dir is None):
            raise LumbarFastError("give exactly one of --out RUNS_DIR and --run-dir DIR")
        if not 0 <= self.fold < self.folds:
            raise LumbarFastError(f"--fold {self.fold} is outside 0..{self.folds - 1}")
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise LumbarFastError("--epochs, --batch-size and --patience must be at least 1")
        if not 0 <= self.shift <= 0.5:
            raise LumbarFastError(f"--shift {self.shift} is outside 0..0.5 (a fraction of the crop's width)")
        if self.cuda_graphs and self.compile:
            raise LumbarFastError("choose one of --cuda-graphs and --compile")
        if self.cuda_graphs and self.amp == "fp16":
            raise LumbarFastError("--cuda-graphs needs --amp bf16 or none (fp16 loss scaling syncs the host)")


# -- items ------------------------------------------------
@dataclass
class Items:
    """What the loaders see: item i is image `rows[i]` of `images_path` with class `labels[i]`."""

    table: pd.DataFrame  # study_id, series_id, condition, level, severity: one row per item
    rows: np.ndarray
    labels: np.ndarray
    images_path: Path

    def subset(self, mask: np.ndarray) -> Items:
        """The items where `mask` holds, in their order."""
        return Items(self.table[mask].reset_index(drop=True), self.rows[mask], self.labels[mask],
                     self.images_path)


def build_items(cache: CacheReader, config: TrainConfig, run: RunFolder) -> Items:
    """Every labelled item of the sequence in the chosen view (and control); missing labels dropped."""
    labels = cache.level_labels(config.sequence).reset_index(drop=True)
    rows = adjacent_level_rows(labels) if config.control == "level-off" else np.arange(len(labels))
    keep = (labels["severity"].to_numpy() != rsna.MISSING) & (rows >= 0)
    if not keep.any():
        raise LumbarFastError(f"the cache {cache.path} has no labelled items for sequence {config.sequence}")
    rows = rows[keep].astype(np.int64)
    images_path = cache.array_path(config.sequence, "levels")
    if config.view == "slice":
        images_path = run.file(SLICE_IMAGES)
        rows = slice_rows(cache, config.sequence, labels["stack_row"].to_numpy()[rows], images_path)
    table = labels.loc[keep, ["study_id", "series_id", "condition", "level", "severity"]]
    return Items(table.reset_index(drop=True), rows, labels.loc[keep, "severity"].to_numpy(np.int64),
                 Path(images_path))


def adjacent_level_rows(labels: pd.DataFrame) -> np.ndarray:
    """Negative control: for each item, the crop of the same study, series and condition one level down
    (one level up for the lowest level); -1 where neither neighbour exists."""
    keys = list(labels[["study_id", "series_id", "condition", "level"]].itertuples(index=False, name=None))
    index = {key: row for row, key in enumerate(keys)}
    rows = np.full(len(labels), -1, dtype=np.int64)
    for row, (study, series, condition, level) in enumerate(keys):
        position = rsna.LEVELS.index(level)
        for other in (position + 1, position - 1):
            key = (study, series, condition, rsna.LEVELS[other]) if 0 <= other < len(rsna.LEVELS) else None
            if key in index:
                rows[row] = index[key]
                break
    return rows


def slice_rows(cache: CacheReader, sequence: str, stack_rows: np.ndarray, path: Path) -> np.ndarray:
    """The seed's whole-slice view: write each distinct labelled slice, with its neighbours as channels,
    to one (N, S, S, C) .npy once (items of one slice share its row); return each item's row in it."""
    channels = np.load(cache.array_path(sequence, "levels"), mmap_mode="r").shape[-1]
    distinct, item_rows = np.unique(stack_rows, return_inverse=True)
    if distributed.is_main() and not path.is_file():
        stacks = np.load(cache.array_path(sequence, "stacks"), mmap_mode="r")
        neighbours = slice_neighbours(cache.stack_index(sequence), distinct, channels)
        _write_npy(path, lambda out: _gather_slices(stacks, neighbours, out),
                   (len(distinct), *stacks.shape[1:], channels))
    distributed.barrier()  # the other ranks read what rank 0 wrote
    return item_rows.astype(np.int64)


def slice_neighbours(index: pd.DataFrame, stack_rows: np.ndarray, channels: int) -> np.ndarray:
    """(len(stack_rows), channels) rows of the stack images around each given row, in ascending position
    within its stack, the given row in the middle and the edge slice repeated (the level crops' rule)."""
    half = channels // 2
    neighbours = np.empty((len(stack_rows), channels), dtype=np.int64)
    ordered = index.reset_index(names="row").sort_values(["study_id", "series_id", "stack", "slice"])
    stacks = {key: group["row"].to_numpy()
              for key, group in ordered.groupby(["study_id", "series_id", "stack"])}
    for i, row in enumerate(stack_rows):
        key = tuple(index.loc[row, ["study_id", "series_id", "stack"]])
        members = stacks[key]
        where = int(np.flatnonzero(members == row)[0])
        neighbours[i] = members[np.clip(np.arange(where - half, where + half + 1), 0, len(members) - 1)]
    return neighbours


def _gather_slices(stacks: np.ndarray, neighbours: np.ndarray, out: np.ndarray) -> None:
    """Fill out[i] (S, S, C) with the stack images neighbours[i]."""
    for i, rows in enumerate(neighbours):
        out[i] = np.moveaxis(stacks[rows], 0, -1)


def _write_npy(path: Path, fill, shape: tuple[int, ...]) -> None:
    """Write a uint8 .npy of `shape` through a memory map, atomically."""
    from lumbar_fast.runfolder import atomic_write

    def write(tmp: Path) -> None:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        fill(array)
        array.flush()
        del array

    atomic_write(path, write)


def split_items(items: Items, train_studies: np.ndarray, val_studies: np.ndarray) -> tuple[Items, Items]:
    """Training and validation items by study (no study on both sides)."""
    studies = items.table["study_id"].to_numpy()
    return items.subset(np.isin(studies, train_studies)), items.subset(np.isin(studies, val_studies))


def shuffled_labels(items: Items, seed: int) -> Items:
    """Negative control: the training labels permuted across items so that they say nothing of the image.

    A plain random permutation keeps a chance correlation with the true labels (about ±1/sqrt(n)), and a
    model reading a clearly visible signal learns it, sign included: validation then lands far from chance
    in either direction. Here every true class receives the new labels in the overall class shares (±1
    item), each item at random within its class, and the class counts (the prior) stay as they were.
    """
    rng = np.random.default_rng(seed)
    by_true_class = np.lexsort((rng.random(len(items.labels)), items.labels))
    counts = np.bincount(items.labels, minlength=len(rsna.SEVERITIES))
    spread = [(k + 0.5) / count for count in counts for k in range(count)]  # each class evenly over [0, 1]
    interleaved = np.repeat(np.arange(len(counts)), counts)[np.argsort(spread, kind="stable")]
    labels = np.empty_like(items.labels)
    labels[by_true_class] = interleaved
    return Items(items.table, items.rows, labels, items.images_path)


def class_frequencies(labels: np.ndarray) -> np.ndarray:
    """The share of each class among `labels` (the prior that the baselines predict)."""
    counts = np.bincount(labels, minlength=len(rsna.SEVERITIES)).astype(np.float64)
    return counts / counts.sum()


def class_weight_tensor(kind: str, labels: np.ndarray, device: torch.device) -> torch.Tensor | None:
    """Cross-entropy class weights: none, the metric's 1/2/4, or inverse training frequency."""
    if kind == "none":
        return None
    if kind == "metric":
        weights = np.asarray(rsna.CLASS_WEIGHTS)
    else:
        counts = np.bincount(labels, minlength=len(rsna.SEVERITIES)).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32, device=device)


# -- model, optimiser, schedule ------------------------------------------------
def build_model(config: TrainConfig, channels: int, device: torch.device) -> nn.Module:
    """The timm classifier (3 classes) on `device`, in channels_last memory format.

    On CUDA, cuDNN autotuning picks the fastest kernels: every training batch has the same shape."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    model = create_model(config.model, pretrained=config.pretrained, weights=config.weights,
                         in_chans=channels, num_classes=len(rsna.SEVERITIES))
    return model.to(device=device, memory_format=torch.channels_last)


def make_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """Adam; for CUDA-graph capture its state and learning rate live on the GPU (capturable, tensor lr)."""
    if config.cuda_graphs:
        lr = torch.tensor(config.lr, device=device)
        return torch.optim.Adam(model.parameters(), lr=lr, capturable=True)
    return torch.optim.Adam(model.parameters(), lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.StepLR:
    """The seed's StepLR, stepped once per epoch."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)


class EarlyStopping:
    """Stops after `patience` epochs without improvement of the monitored value; remembers the best epoch."""

    def __init__(self, mode: str, patience: int) -> None:
        self.mode = mode
        self.patience = patience
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record one epoch's value; True when it is the best so far."""
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        """True once `patience` epochs in a row failed to improve."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The state a checkpoint stores."""
        return {"mode": self.mode, "patience": self.patience, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint."""
        self.mode, self.patience, self.best = state["mode"], state["patience"], state["best"]
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]


# -- one optimisation step ------------------------------------------------
class EagerStep:
    """Forward, loss, backward and Adam step under autocast; fp16 with a gradient scaler."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 amp_dtype: torch.dtype | None, device: torch.device) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.amp_dtype, self.device = amp_dtype, device
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step; returns the detached mean loss and the number of correct predictions."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits = self.model(images)
        loss = self.criterion(logits.float(), labels)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), (logits.argmax(1) == labels).sum()


class GraphStep:
    """The whole step (forward, loss, backward, Adam) captured once as a CUDA graph and replayed per batch.

    Static shapes: every training batch has the same size (the loaders drop the last partial one). Warm-up
    iterations run on a side stream before capture; model and optimiser state are restored afterwards, so
    the warm-up leaves no trace and the run equals an eager one up to floating-point order.
    """

    warmup_steps = 3

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                 amp_dtype: torch.dtype | None, device: torch.device) -> None:
        self.model, self.optimizer, self.criterion = model, optimizer, criterion
        self.amp_dtype, self.device = amp_dtype, device
        self.graph: torch.cuda.CUDAGraph | None = None

    def _forward_backward(self) -> None:
        with torch.autocast("cuda", dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=False):
            self.logits = self.model(self.images)
        self.loss = self.criterion(self.logits.float(), self.labels)
        self.loss.backward()
        self.optimizer.step()
        self.correct = (self.logits.argmax(1) == self.labels).sum()

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.clone(), labels.clone()
        saved = snapshot_training_state(self.model, self.optimizer)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.optimizer.zero_grad(set_to_none=True)
                self._forward_backward()
        torch.cuda.current_stream().wait_stream(side)
        del self.logits, self.loss, self.correct  # free the warm-up's autograd graph before capture
        restore_training_state(self.model, self.optimizer, saved)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self._forward_backward()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy the batch into the graph's static inputs and replay; returns loss and correct count."""
        if self.graph is None:
            self._capture(images, labels)
        self.images.copy_(images, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        return self.loss.detach().clone(), self.correct.clone()


def snapshot_training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Copies of the model's parameters and buffers and of Adam's state tensors (taken before warm-up)."""
    return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "optimizer": {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}}


def restore_training_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Undo the warm-up in place (the graph needs the same tensors): copy back what was there, and zero
    the Adam state that the warm-up created (zero moments and step are a fresh Adam's state)."""
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(saved["model"][key])
        for param, state in optimizer.state.items():
            before = saved["optimizer"].get(param)
            for key, value in state.items():
                value.copy_(before[key]) if before is not None else value.zero_()


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
              amp_dtype: torch.dtype | None, device: torch.device,
              cuda_graphs: bool) -> EagerStep | GraphStep:
    """The training step the configuration asks for."""
    if cuda_graphs:
        return GraphStep(model, optimizer, criterion, amp_dtype, device)
    return EagerStep(model, optimizer, criterion, amp_dtype, device)


# -- epochs ------------------------------------------------
def train_one_epoch(step, model: nn.Module, loader, epoch: int, limit_batches: int | None,
                    progress: bool, device: torch.device) -> dict[str, float]:
    """One pass over the training loader; loss and accuracy accumulate on the device (no per-batch sync)
    and are summed over the ranks at the end, so the figures cover every rank's images."""
    model.train()
    total = min(len(loader), limit_batches or len(loader))
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    images = 0
    seen = []
    start = time.perf_counter()
    with tqdm(total=total, desc=f"epoch {epoch + 1}", unit="batch", disable=not progress,
              leave=False) as bar:
        for index, batch in enumerate(loader.epoch(epoch)):
            if index >= total:
                break
            loss, right = step(batch.images, batch.labels)
            loss_sum += loss * len(batch.labels)
            correct += right
            images += len(batch.labels)
            seen.append(batch.items)
            bar.update(1)
            bar.set_postfix_str(f"{images / (time.perf_counter() - start):.0f} img/s", refresh=False)
    log_items(epoch, seen)
    sums = distributed.all_reduce_sum(torch.stack([loss_sum, correct, loss_sum.new_tensor(images)]))
    loss_total, correct_total, images = sums.tolist()  # .tolist() waits for the device
    seconds = time.perf_counter() - start
    return {"train_loss": loss_total / max(images, 1), "train_accuracy": correct_total / max(images, 1),
            "train_images": int(images), "train_seconds": seconds, "train_images_per_s": images / seconds}


def log_items(epoch: int, batches: list[torch.Tensor]) -> None:
    """Append this rank's training items of `epoch` to the item log, when ITEM_LOG_ENV names a folder."""
    folder = os.environ.get(ITEM_LOG_ENV)
    if not folder:
        return
    items = torch.cat(batches).tolist() if batches else []
    record = {"epoch": epoch, "rank": distributed.rank(), "world_size": distributed.world_size(),
              "items": items}
    with open(Path(folder) / f"items-rank{distributed.rank()}.jsonl", "a") as log:
        log.write(json.dumps(record) + "\n")


def validate(model: nn.Module, loader, items: Items, prior: np.ndarray, amp_dtype: torch.dtype | None,
             limit_batches: int | None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics over the validation items (each exactly once, over all ranks) and their predictions table;
    every rank computes the same."""
    order, probs = distributed.all_gather_rows(*predict_items(model, loader, amp_dtype, limit_batches))
    labels = items.labels[order]
    summary = classification_summary(labels, probs, prior)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1.0)
    metrics = {"val_loss": float(-np.log(picked).mean()), **{f"val_{k}": v for k, v in summary.items()}}
    predictions = items.table.iloc[order].reset_index(drop=True).assign(
        **{f"p_{name}": probs[:, i] for i, name in enumerate(rsna.SUBMISSION_COLUMNS)})
    return metrics, predictions


# -- runs ------------------------------------------------
@dataclass
class Session:
    """Everything a run holds while it trains."""

    config: TrainConfig
    run: RunFolder
    device: torch.device
    amp_dtype: torch.dtype | None
    split: pd.DataFrame
    train_items: Items
    val_items: Items
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stopper: EarlyStopping
    records: list[dict[str, Any]]
    start_epoch: int = 0


def new_run_folder(config: TrainConfig) -> RunFolder:
    """The run's folder: --run-dir itself, or a new `{sequence}-{view}-fold{k}-{time}` folder in --out."""
    if config.run_dir is not None:
        return RunFolder.create(Path(config.run_dir))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"{config.sequence}-{config.view}-fold{config.fold}-{stamp}"
    if config.control != "none":
        name += f"-{config.control}"
    return RunFolder.create(Path(config.out) / name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch, so that model init and dropout repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The random generators' states, saved in last.pt."""
    state = {"python": random.getstate(), "numpy": _numpy_state_to_torch(np.random.get_state()),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state saved."""
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_torch(state: tuple) -> tuple:
    kind, keys, *rest = state
    return (kind, torch.from_numpy(keys.astype(np.int64)), *rest)


def prepare(config: TrainConfig, run: RunFolder) -> Session:
    """Open the cache, split, build model, items, optimiser and schedule for `config` (no training yet).
    Every input check happens here, before the run folder gets its first file."""
    device = distributed.rank_device(resolve_device(config.device))
    if config.cuda_graphs and device.type != "cuda":
        raise LumbarFastError("--cuda-graphs needs a CUDA device")
    if config.cuda_graphs and distributed.world_size() > 1:
        raise LumbarFastError("--cuda-graphs runs in a single process only; drop it to train with torchrun")
    amp_dtype = amp_dtype_for(config.amp, device)
    cache = open_cache(config.cache)
    if config.sequence not in cache.sequences():
        raise LumbarFastError(f"the cache {cache.path} has no items for sequence {config.sequence}")
    seed_everything(config.seed)
    distributed.on_main(cache.array_path, config.sequence, "levels")  # rank 0 exports a missing copy first
    channels = np.load(cache.array_path(config.sequence, "levels"), mmap_mode="r").shape[-1]
    model = build_model(config, channels, device)
    items = build_items(cache, config, run)
    split = distributed.on_main(load_or_create_split, cache.study_labels(), cache.path, config.folds,
                                config.split_seed, config.split_file)
    train_items, val_items = split_items(items, *train_val_studies(split, config.fold))
    if len(train_items.labels) < config.batch_size or len(val_items.labels) == 0:
        raise LumbarFastError(f"fold {config.fold} leaves {len(train_items.labels)} training and "
                              f"{len(val_items.labels)} validation items: too few for batch size "
                              f"{config.batch_size}")
    if config.control == "shuffled-labels":
        train_items = shuffled_labels(train_items, config.seed)
    optimizer = make_optimizer(model, config, device)
    stopper = EarlyStopping(MONITORS[config.monitor], config.patience)
    return Session(config, run, device, amp_dtype, split, train_items, val_items, model, optimizer,
                   make_scheduler(optimizer, config), stopper, records=[])


def loader_config(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None) -> LoaderConfig:
    """The loaders' settings for this run and rank (each rank its own share of every epoch); float32 images
    when not autocasting."""
    return LoaderConfig(batch_size=config.batch_size, device=str(device), workers=config.workers,
                        seed=config.seed, rank=distributed.rank(), world_size=distributed.world_size(),
                        augment=recipes.augment_config(config.augment, config.shift),
                        dtype=torch.float32 if amp_dtype is None else None)


def checkpoint_meta(session: Session, cfg: LoaderConfig) -> dict[str, Any]:
    """What inference needs besides the weights: model, sequence, view, image geometry, normalisation."""
    shape = np.load(session.train_items.images_path, mmap_mode="r").shape
    mean, std = normalisation_stats(cfg, shape[-1])
    return {"model_name": session.config.model, "sequence": session.config.sequence,
            "view": session.config.view, "image_size": int(shape[1]), "channels": int(shape[-1]),
            "mean": (mean / 255).tolist(), "std": (std / 255).tolist(), "num_classes": len(rsna.SEVERITIES),
            "config": dataclasses.asdict(session.config)}


def monitored_value(config: TrainConfig, metrics: dict[str, Any]) -> float:
    """The value early stopping watches: validation accuracy, loss, or RSNA weighted log loss."""
    key = {"accuracy": "val_accuracy", "loss": "val_loss", "rsna": "val_weighted_log_loss"}[config.monitor]
    return float(metrics[key])


def fit(session: Session) -> Path:
    """Train from session.start_epoch to the last epoch or early stop, checkpointing every epoch."""
    config, run = session.config, session.run
    weights = class_weight_tensor(config.class_weights, session.train_items.labels, session.device)
    criterion = nn.CrossEntropyLoss(weight=weights)
    network, evaluator = training_networks(session.model, config, session.device)
    step = make_step(network, session.optimizer, criterion, session.amp_dtype, session.device,
                     config.cuda_graphs)
    prior = class_frequencies(session.train_items.labels)
    cfg = loader_config(config, session.device, session.amp_dtype)
    meta = checkpoint_meta(session, cfg)
    if distributed.is_main() and not run.file(SPLIT).is_file():
        run.write_table(SPLIT, session.split)
    train_loader = build_loader(config.loader, session.train_items.images_path, session.train_items.rows,
                                session.train_items.labels, cfg, train=True)
    val_loader = build_loader(config.loader, session.val_items.images_path, session.val_items.rows,
                              session.val_items.labels, cfg, train=False)
    try:
        for epoch in range(session.start_epoch, config.epochs):
            if session.stopper.should_stop:
                break
            lr = session.optimizer.param_groups[0]["lr"]
            started = time.perf_counter()
            train_metrics = train_one_epoch(step, network, train_loader, epoch, config.limit_batches,
                                            config.progress and distributed.is_main(), session.device)
            distributed.broadcast_buffers(session.model)  # every rank validates rank 0's model, the saved one
            val_metrics, predictions = validate(evaluator, val_loader, session.val_items, prior,
                                                session.amp_dtype, config.limit_batches)
            session.scheduler.step()
            improved = update_early_stopping(session.stopper, monitored_value(config, val_metrics), epoch)
            record = {"epoch": epoch + 1, "lr": float(lr), **train_metrics, **val_metrics,
                      "best": improved, "epoch_seconds": time.perf_counter() - started}
            session.records.append(_plain(record))
            if distributed.is_main():
                save_epoch(session, meta, predictions if improved else None)
    finally:
        train_loader.close()
        val_loader.close()
    return run.path


def training_networks(model: nn.Module, config: TrainConfig,
                      device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The module that trains (DDP across ranks when several train, compiled on request) and the one that
    validates: the bare (compiled) model, as validation runs no collectives and ranks may differ by one
    batch."""
    trainer = distributed.wrap(model, device)
    if not config.compile:
        return trainer, model
    compiled = torch.compile(trainer)
    return compiled, compiled if trainer is model else torch.compile(model)


def update_early_stopping(stopper: EarlyStopping, value: float, epoch: int) -> bool:
    """Record the epoch's monitored value; rank 0's verdict and state are adopted by every rank, so that
    all ranks stop at the same epoch. True when the epoch is the best so far."""
    improved = stopper.update(value, epoch)
    improved, state = distributed.broadcast((improved, stopper.state_dict()))
    stopper.load_state_dict(state)
    return improved


def save_epoch(session: Session, meta: dict[str, Any], best_predictions: pd.DataFrame | None) -> None:
    """Rank 0's files after an epoch: best.pt and val_predictions.csv when it improved (predictions given),
    last.pt, metrics and curves; and the epoch's line on stdout."""
    run, epoch = session.run, session.records[-1]["epoch"]
    if best_predictions is not None:
        run.save_checkpoint(BEST, {**meta, "epoch": epoch, "model": session.model.state_dict(),
                                   "metrics": session.records[-1]})
        run.write_table(PREDICTIONS, best_predictions)
    run.save_checkpoint(LAST, last_state(session, meta, epoch))
    run.write_metrics(session.records)
    print(epoch_line(session.records[-1]), flush=True)


def last_state(session: Session, meta: dict[str, Any], epochs_done: int) -> dict[str, Any]:
    """last.pt: everything `resume` needs to continue exactly where this epoch ended."""
    return {**meta, "epoch": epochs_done, "model": session.model.state_dict(),
            "optimizer": session.optimizer.state_dict(), "scheduler": session.scheduler.state_dict(),
            "early_stopping": session.stopper.state_dict(), "rng": rng_state(), "records": session.records}


def epoch_line(record: dict[str, Any]) -> str:
    """One line per epoch on stdout: the numbers that tell whether the model learns."""
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.3f} | val loss {record['val_loss']:.4f} "
            f"acc {record['val_accuracy']:.3f} (majority {record['val_majority_accuracy']:.3f}) "
            f"balanced {record['val_balanced_accuracy']:.3f} "
            f"wll {record['val_weighted_log_loss']:.4f} (prior {record['val_prior_weighted_log_loss']:.4f}) "
            f"| {record['train_images_per_s']:.0f} img/s")


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def train(config: TrainConfig) -> Path:
    """Start a new run for `config` (its `auto` values resolved by the recipe); returns its folder."""
    config.check()
    config = config.resolved()
    with distributed.process_group(resolve_device(config.device)):
        run = distributed.on_main(new_run_folder, config)  # one folder (one time stamp) for every rank
        session = prepare(config, run)
        if distributed.is_main():
            run.write_config(dataclasses.asdict(config))
        return fit(session)


def resume(run_dir: str | Path) -> Path:
    """Continue a run from its last.pt (model, optimiser, schedule, early stopping, RNG) to the same result
    as an uninterrupted run; a finished run returns at once."""
    run = RunFolder.open_existing(Path(run_dir))
    try:
        config = TrainConfig.from_record(run.read_config())
    except TypeError as exc:
        raise LumbarFastError(f"{run_dir} was written by an incompatible version: {exc}") from None
    with distributed.process_group(resolve_device(config.device)):
        return resume_session(run, config, run.load_checkpoint(LAST))


def resume_session(run: RunFolder, config: TrainConfig, state: dict[str, Any]) -> Path:
    """Rebuild the run's session on this rank from last.pt (every rank loads it) and train on."""
    session = prepare(config, run)
    try:
        session.model.load_state_dict(state["model"])
        session.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise LumbarFastError(f"{run.file(LAST)} does not fit this run's model: {exc}") from None
    if config.cuda_graphs:  # the checkpoint was read onto the CPU; a captured step needs its lr on the GPU
        for group in session.optimizer.param_groups:
            group["lr"] = torch.as_tensor(group["lr"], device=session.device)
    session.scheduler.load_state_dict(state["scheduler"])
    session.stopper.load_state_dict(state["early_stopping"])
    session.records = list(state["records"])
    session.start_epoch = state["epoch"]
    set_rng_state(state["rng"])
    if distributed.is_main():
        run.write_metrics(session.records)
    return fit(session)
