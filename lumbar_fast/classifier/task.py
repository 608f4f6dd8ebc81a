"""The classifier as a task of the training core: its epoch over the loaders, its validation metrics and
predictions, and what its checkpoints hold (`lumbar_fast.training.task.TrainingTask`)."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lumbar_fast import distributed, recipes, rsna, testhooks
from lumbar_fast.cache import ImageSettings, open_training_cache
from lumbar_fast.calibration import calibrate, write_calibration
from lumbar_fast.classifier.config import MONITORS, PANELS, TrainConfig
from lumbar_fast.classifier.items import (
    Items,
    class_weight_tensor,
    in_view,
    level_items,
    shuffled_labels,
    split_items,
)
from lumbar_fast.classifier.steps import (
    build_model,
    check_cuda_graphs,
    make_optimizer,
    make_scheduler,
    make_step,
)
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.inference import predict_items
from lumbar_fast.loaders import Loader, LoaderConfig, build_loader, normalisation_stats
from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.metrics import class_prior, classification_summary
from lumbar_fast.models.classifier import uses_windows
from lumbar_fast.runfolder import PREDICTIONS, RunFolder
from lumbar_fast.split import load_or_create_split, train_val_studies
from lumbar_fast.training.amp import amp_dtype_for
from lumbar_fast.training.records import EpochBar, shown
from lumbar_fast.training.rng import seed_everything
from lumbar_fast.training.task import TaskKind, TrainingTask


class ClassifierTask(TrainingTask):
    """One classifier run's items and optimisation (Adam, StepLR); loaders and the step live while epochs
    run."""

    kind = TaskKind(panels=PANELS, monitors=MONITORS)

    def __init__(self, config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
                 split: pd.DataFrame, items: tuple[Items, Items], model: nn.Module,
                 cache_settings: ImageSettings) -> None:
        optimizer = make_optimizer(model, config, device)
        super().__init__(config, device, amp_dtype, split, model, optimizer,
                         make_scheduler(optimizer, config), cache_settings)
        self.train_items, self.val_items = train_items, val_items = items
        self.prior = class_prior(train_items.labels)
        self.loader_config = loader_config(config, device, amp_dtype, cache_settings.channels)
        self.meta = checkpoint_meta(config, cache_settings, self.loader_config)

    def __enter__(self) -> ClassifierTask:
        config, device = self.config, self.device
        weights = class_weight_tensor(config.class_weights, self.train_items.labels, device)
        self.network, self.evaluator = training_networks(self.model, config, device)
        loss = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
        self.step = make_step(self.network, self.optimizer, loss, self.amp_dtype, device, config.cuda_graphs,
                              self.scaler)
        self.loaders: list[Loader] = []
        self.train_loader = self._loader(self.train_items, train=True)
        self.val_loader = self._loader(self.val_items, train=False)
        return self

    def _loader(self, items: Items, train: bool) -> Loader:
        """A started loader of `items`, closed on exit."""
        loader = build_loader(self.config.loader, items.images_path, items.rows, items.labels,
                              self.loader_config, train=train)
        self.loaders.append(loader)
        return loader

    def __exit__(self, *exc: object) -> None:
        for loader in self.loaders:
            loader.close()

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        return train_one_epoch(self.step, self.network, self.train_loader, epoch, self.config.limit_batches,
                               self.config.progress and distributed.is_main(), self.device)

    def validate(self, epoch: int) -> tuple[dict[str, Any], pd.DataFrame]:
        return validation_results(self.evaluator, self.val_loader, self.val_items, self.prior, self.amp_dtype,
                        self.config.limit_batches)

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.meta

    def finish(self, run: RunFolder) -> None:
        """Fit the run's calibration on its best epoch's validation predictions (calibration.json); a run
        recorded before calibration existed (`auto` in its config) takes its recipe's."""
        method = self.config.calibration
        if method == recipes.AUTO:
            method = recipes.recipe_for(self.config.recipe, self.config.sequence).calibration
        calibration = calibrate(method, pd.read_csv(run.file(PREDICTIONS)))
        write_calibration(run.path, calibration)
        print(calibration.line(), flush=True)

    def epoch_line(self, record: dict[str, Any]) -> str:
        """One line per epoch on stdout: the numbers that tell whether the model learns."""
        number = partial(shown, record)
        return (f"epoch {record['epoch']}: train loss {number('train_loss', 4)} "
                f"acc {number('train_accuracy', 3)} | val loss {number('val_loss', 4)} "
                f"acc {number('val_accuracy', 3)} (majority {number('val_majority_accuracy', 3)}) "
                f"balanced {number('val_balanced_accuracy', 3)} "
                f"wll {number('val_weighted_log_loss', 4)} "
                f"(prior {number('val_prior_weighted_log_loss', 4)}, "
                f"best constant {number('val_constant_weighted_log_loss', 4)}) "
                f"| {record['train_images_per_s']:.0f} img/s")


def prepare_classifier(config: TrainConfig, run: RunFolder) -> ClassifierTask:
    """Open the cache, split, build model, items and optimisation for `config` (no training yet). Every
    input check happens here, before the run folder gets its first file."""
    device = distributed.rank_device(resolve_device(config.device))
    amp_dtype = amp_dtype_for(config.amp, device)
    if config.cuda_graphs:
        check_cuda_graphs(device, amp_dtype, distributed.world_size(), config.pooling)
    cache = open_training_cache(config.cache)
    if config.sequence not in cache.sequences():
        raise LumbarFastError(f"the cache {cache.path} has no items for sequence {config.sequence}")
    seed_everything(config.seed)
    distributed.on_main(cache.array_path, config.sequence, "levels")  # rank 0 exports a missing copy first
    model = build_model(config, cache.slices_per_crop(), device)
    items = level_items(cache, config)
    split = distributed.on_main(load_or_create_split, cache.study_labels(), cache.path, config.folds,
                                config.split_seed, config.split_file)
    studies = train_val_studies(split, config.fold)
    check_fold(config, *split_items(items, *studies), distributed.world_size())
    train_items, val_items = split_items(in_view(items, cache, config, run), *studies)
    if config.control == "shuffled-labels":
        train_items = shuffled_labels(train_items, config.seed)
    return ClassifierTask(config, device, amp_dtype, split, (train_items, val_items), model,
                          cache.settings().images)


def check_fold(config: TrainConfig, train_items: Items, val_items: Items, world_size: int = 1) -> None:
    """Refuse a fold with fewer training items than one batch on every process, or no validation item, before
    the run folder gets its first file (the epoch plan would refuse it only once training starts)."""
    if len(train_items.labels) < config.batch_size * world_size or len(val_items.labels) == 0:
        processes = f" × {world_size} processes" if world_size > 1 else ""
        raise LumbarFastError(f"fold {config.fold} leaves {len(train_items.labels)} training and "
                              f"{len(val_items.labels)} validation items: too few for batch size "
                              f"{config.batch_size}{processes}")


def loader_config(config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
                  channels: int) -> LoaderConfig:
    """The loaders' settings for this run and rank (each rank its own share of every epoch) on crops of
    `channels` slices; float32 images when not autocasting. A multi-slice model normalises each window
    itself: its loaders scale to [0, 1]."""
    scaled = uses_windows(config.pooling)
    return LoaderConfig(batch_size=config.batch_size, device=str(device), workers=config.workers,
                        seed=config.seed, rank=distributed.rank(), world_size=distributed.world_size(),
                        augment=recipes.augment_config(config.augment, config.shift),
                        dtype=torch.float32 if amp_dtype is None else None,
                        mean=(0.0,) * channels if scaled else None, std=(1.0,) * channels if scaled else None)


def checkpoint_meta(config: TrainConfig, images: ImageSettings, cfg: LoaderConfig) -> dict[str, Any]:
    """What inference needs besides the weights: model and its windows over the slices, sequence, view,
    geometry of the training images (the cache's: S×S, C slices per crop), normalisation."""
    mean, std = normalisation_stats(cfg, images.channels)
    return {"model_name": config.model, "pooling": config.pooling, "window_stride": config.window_stride,
            "window_padding": config.window_padding, "sequence": config.sequence, "view": config.view,
            "image_size": images.size, "channels": images.channels, "mean": (mean / 255).tolist(),
            "std": (std / 255).tolist(), "num_classes": len(rsna.SEVERITIES),
            "config": dataclasses.asdict(config)}


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


def train_one_epoch(step, model: nn.Module, loader: Loader, epoch: int, limit_batches: int | None,
                    progress: bool, device: torch.device) -> dict[str, float]:
    """One pass over the training loader; loss and accuracy accumulate on the device (no per-batch sync)
    and are summed over the ranks at the end, so the figures cover every rank's images."""
    model.train()
    total = min(len(loader), limit_batches or len(loader))
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.float64)
    images = 0
    seen = []
    with EpochBar(epoch, total, "batch", "img", progress) as bar:
        for index, batch in enumerate(loader.epoch(epoch)):
            if index >= total:
                break
            loss, right = step(batch.images, batch.labels)
            loss_sum += loss * len(batch.labels)
            correct += right
            images += len(batch.labels)
            seen.append(batch.items)
            bar.advance(images)
        testhooks.log_items(epoch, distributed.rank(), distributed.world_size(), seen)
        sums = distributed.all_reduce_sum(torch.stack([loss_sum, correct, loss_sum.new_tensor(images)]))
        loss_total, correct_total, images = sums.tolist()  # .tolist() waits for the device
        seconds = bar.seconds()
    return {"train_loss": loss_total / max(images, 1), "train_accuracy": correct_total / max(images, 1),
            "train_images": int(images), "train_seconds": seconds, "train_images_per_s": images / seconds}


def validation_results(model: nn.Module, loader, items: Items, prior: np.ndarray,
                       amp_dtype: torch.dtype | None,
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
