"""The locator as a task of the training core (`lumbar_fast.training`), which runs its epochs, checkpoints,
early stopping, resume and run folder as it does the classifier's. The unit of work is one series, all its
slices (or a window of at most `max_slices` of them) per step; the metrics are the point error in mm, the
slice error and the level naming (`locator.metrics`), beside the mean-position baseline's.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch

from lumbar_fast import distributed
from lumbar_fast.cache import ImageSettings, open_training_cache
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.loaders.series import SeriesLoader, SeriesLoaderConfig
from lumbar_fast.locator.config import KIND, MONITORS, PANELS, LocatorConfig
from lumbar_fast.locator.decode import decode_series, prediction_table
from lumbar_fast.locator.losses import series_loss
from lumbar_fast.locator.metrics import (
    mean_position_predictions,
    point_errors,
    summarise_localisation,
)
from lumbar_fast.locator.targets import LocatorData, fit_position_prior, load_data
from lumbar_fast.models.locator import Locator
from lumbar_fast.runfolder import RunFolder
from lumbar_fast.split import load_or_create_split, train_val_studies
from lumbar_fast.training.amp import amp_dtype_for
from lumbar_fast.training.records import EpochBar, shown
from lumbar_fast.training.rng import seed_everything
from lumbar_fast.training.task import TaskKind, TrainingTask


class LocatorTask(TrainingTask):
    """One locator run's data, model and optimisation: AdamW with a cosine schedule over the epochs."""

    kind = TaskKind(panels=PANELS, monitors=MONITORS)

    def __init__(self, config: LocatorConfig, device: torch.device, amp_dtype: torch.dtype | None,
                 split: pd.DataFrame, data: LocatorData, series: tuple[list[int], list[int]],
                 model: Locator, cache_settings: ImageSettings) -> None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        super().__init__(config, device, amp_dtype, split, model, optimizer,
                         torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs),
                         cache_settings)
        self.data, (self.train_series, self.val_series) = data, series
        loader_config = SeriesLoaderConfig(config.image_size, device, config.seed, config.max_slices,
                                           config.augment, config.limit_series)
        self.train_loader = SeriesLoader(data, self.train_series, loader_config, train=True)
        self.val_loader = SeriesLoader(data, self.val_series, loader_config, train=False)

    def __enter__(self) -> LocatorTask:
        baseline = summarise_localisation(point_errors(
            mean_position_predictions(self.data, self.train_series, self.val_series), self.data.labels,
            self.data.stack_index))
        self.baseline = {f"baseline_{k}": v for k, v in baseline.items()}
        return self

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training series in a seeded order, with a progress bar in slices/s."""
        self.model.train()
        sums = np.zeros(2)
        slices = 0
        with EpochBar(epoch, len(self.train_loader), "series", "slices", self.config.progress) as bar:
            for batch in self.train_loader.epoch(epoch):
                heatmap_loss, slice_loss = self.step(batch)
                sums += (heatmap_loss, slice_loss)
                slices += len(batch.images)
                bar.advance(slices)
            seconds = bar.seconds()
        heatmap_loss, slice_loss = sums / max(len(self.train_loader), 1)
        return {"train_loss": heatmap_loss + slice_loss, "train_heatmap_loss": heatmap_loss,
                "train_slice_loss": slice_loss, "train_seconds": seconds,
                "train_slices_per_s": slices / seconds}

    def step(self, batch) -> tuple[float, float]:
        """One optimiser step on one series; its heatmap and slice losses."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            heatmaps, slice_logits = self.model(batch.images, batch.layout)
        heatmap_loss, slice_loss = series_loss(heatmaps.float(), slice_logits.float(), batch.target)
        self.scaler.scale(heatmap_loss + slice_loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return heatmap_loss.item(), slice_loss.item()

    def validate(self, epoch: int) -> tuple[dict[str, Any], pd.DataFrame]:
        """The localisation metrics of the validation series, beside the mean-position baseline's."""
        metrics, predictions, _ = evaluate_series(self.model, self.val_loader)
        return {**metrics, **self.baseline}, predictions

    def checkpoint_meta(self) -> dict[str, Any]:
        """What `locate` needs besides the weights."""
        config = self.config
        return {"kind": KIND, "model_name": config.model, "sequence": config.sequence, "width": config.width,
                "image_size": config.image_size, "targets": [list(t) for t in self.data.names],
                "config": dataclasses.asdict(config)}

    def epoch_line(self, record: dict[str, Any]) -> str:
        """One line per epoch on stdout: losses and the localisation numbers."""
        number = partial(shown, record)
        return (f"epoch {record['epoch']}: train loss {number('train_loss', 3)} "
                f"| val loss {number('val_loss', 3)} "
                f"point error median {number('val_point_error_median_mm', 2)} mm "
                f"p90 {number('val_point_error_p90_mm', 2)} mm "
                f"(mean-position baseline {number('baseline_point_error_median_mm', 2)} mm) "
                f"| slice ±1 {number('val_slice_within_1', 3)} "
                f"| level name {number('val_level_name_accuracy', 3)} "
                f"| {record['train_slices_per_s']:.0f} slices/s")


@torch.no_grad()
def evaluate_series(model: Locator,
                    loader: SeriesLoader) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Losses and localisation metrics over a validation loader's series (every slice), their predictions
    table and its per-point errors (`metrics.point_errors`)."""
    model.eval()
    data = loader.data
    tables, losses = [], []
    for batch in loader.epoch(0):
        heatmaps, slice_logits = model.predict(batch.images, batch.layout)
        losses.append([loss.item() for loss in series_loss(heatmaps, slice_logits, batch.target)])
        tables.append(prediction_table(data.series[batch.item], decode_series(heatmaps, slice_logits),
                                       data.stack_index, data.names))
    predictions = pd.concat(tables, ignore_index=True)
    heatmap_loss, slice_loss = np.mean(losses, axis=0) if losses else (float("nan"), float("nan"))
    points = point_errors(predictions, data.labels, data.stack_index)
    metrics = summarise_localisation(points)
    losses = {"val_loss": heatmap_loss + slice_loss, "val_heatmap_loss": heatmap_loss,
              "val_slice_loss": slice_loss}
    return {**losses, **{f"val_{k}": v for k, v in metrics.items()}}, predictions, points


def prepare_locator(config: LocatorConfig, run: RunFolder) -> LocatorTask:
    """Open the cache, split, build data, model, optimiser and schedule (all input checks before training)."""
    device = distributed.rank_device(resolve_device(config.device))
    amp_dtype = amp_dtype_for(config.amp, device)
    cache = open_training_cache(config.cache)
    data = load_data(cache, config.sequence)
    split = distributed.on_main(load_or_create_split, cache.study_labels(), cache.path, config.folds,
                                config.split_seed, config.split_file)
    train_studies, val_studies = train_val_studies(split, config.fold)
    train_series = data.indices_of(train_studies, labelled_only=True)
    val_series = data.indices_of(val_studies, labelled_only=True)
    if not train_series or not val_series:
        raise LumbarFastError(f"fold {config.fold} leaves {len(train_series)} training and {len(val_series)} "
                              f"validation series with labelled points for {config.sequence}")
    seed_everything(config.seed)
    model = Locator(config.model, len(data.names), pretrained=config.pretrained, width=config.width)
    model.set_position_prior(*fit_position_prior([data.series[i] for i in train_series],
                                                 [data.targets[i] for i in train_series]))
    model = model.to(device, memory_format=torch.channels_last)
    return LocatorTask(config, device, amp_dtype, split, data, (train_series, val_series), model,
                       cache.settings().images)
