"""Training a level locator (`lumbar-fast train-locator`): the cache's ordered stacks in, labelled points out.

It is a task of the training core (`lumbar_fast.training`), which runs its epochs, checkpoints, early
stopping, resume and run folder as it does the classifier's; what the task holds is the unit of work — one
series, all its slices (or a window of at most `max_slices` of them) per step — and the metrics: point
error in mm, slice error and level naming (`locator.localisation_metrics`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lumbar_fast import locator as loc
from lumbar_fast.cache import ImageSettings, open_cache
from lumbar_fast.errors import LumbarFastError, first_line
from lumbar_fast.inference import amp_dtype_for, resolve_device
from lumbar_fast.runfolder import SPLIT, Panels, RunFolder
from lumbar_fast.split import load_or_create_split, read_split_file, require_studies, train_val_studies
from lumbar_fast.training import loop as training
from lumbar_fast.training.config import RunConfig
from lumbar_fast.training.records import EpochBar
from lumbar_fast.training.rng import seed_everything
from lumbar_fast.training.task import TaskKind, TrainingTask

#: validation value watched by early stopping and best.pt -> (metrics key, mode)
MONITORS = {"loss": ("val_loss", "min"), "point-error": ("val_point_error_median_mm", "min")}
#: curves.png of a locator run
PANELS: Panels = {
    "loss": (("train_loss", "train loss", "-"), ("val_loss", "val loss", "-")),
    "point error, mm (baseline dashed)": (
        ("val_point_error_median_mm", "val median", "-"), ("val_point_error_p90_mm", "val p90", "-"),
        ("baseline_point_error_median_mm", "mean-position baseline median", "--")),
    "share of points": (("val_slice_within_1", "slice within ±1", "-"),
                        ("val_level_name_accuracy", "right level name", "-")),
}


@dataclass
class LocatorConfig(RunConfig):
    """Every argument of a locator run; stored in config.json, so `resume` rebuilds the identical run."""

    model: str = "resnet18"
    pretrained: bool = True
    image_size: int = 160
    width: int = 32
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    monitor: str = "loss"
    max_slices: int = 64
    augment: bool = True
    limit_series: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = loc.KIND  # tells evaluate (and a reader of config.json) that this is a locator run

    def run_name(self, stamp: str) -> str:
        """A new run's folder name in --out: `locator-{sequence}-fold{k}-{time}`."""
        return f"locator-{self.sequence}-fold{self.fold}-{stamp}"

    def check(self) -> None:
        """Refuse inconsistent arguments with one line each, before any work starts."""
        self.check_run()
        if self.kind != loc.KIND:
            raise LumbarFastError(f"a locator run's kind is {loc.KIND!r}, not {self.kind!r}")
        if self.monitor not in MONITORS:
            raise LumbarFastError(f"--monitor must be one of {', '.join(MONITORS)}")
        if self.epochs < 1 or self.patience < 1 or self.max_slices < 3 or self.image_size < 32:
            raise LumbarFastError("--epochs and --patience must be at least 1, --max-slices at least 3 "
                                  "and --image-size at least 32")


# -- data ----------------------------------------------------------------------------------------------------
@dataclass
class LocatorData:
    """A sequence's stacks in RAM, grouped into series, with each series' targets."""

    stack_index: pd.DataFrame
    images: np.ndarray
    labels: pd.DataFrame
    series: list[loc.Series]
    targets: list[loc.SeriesTargets]
    names: list[tuple[str, str]]

    def indices_of(self, studies: np.ndarray, labelled_only: bool) -> list[int]:
        """Positions in `series` of the given studies' series (optionally only those with labelled points)."""
        wanted = set(studies.tolist())
        return [i for i, s in enumerate(self.series)
                if s.study_id in wanted and (not labelled_only or self.targets[i].present.any())]


def load_data(cache, sequence: str) -> LocatorData:
    """Read a sequence's stacks, index and labels from the cache and build every series' targets."""
    if sequence not in cache.sequences():
        raise LumbarFastError(f"the cache {cache.path} has no {sequence} stacks")
    stack_index = cache.stack_index(sequence).reset_index(drop=True)
    labels = cache.level_labels(sequence).reset_index(drop=True)
    names = loc.locator_targets(sequence)
    series = loc.series_of(stack_index)
    return LocatorData(stack_index, cache.stack_images(sequence), labels, series,
                       loc.all_targets(series, labels, stack_index, names), names)


def window(series: loc.Series, target: loc.SeriesTargets, start: int,
           length: int) -> tuple[loc.Series, loc.SeriesTargets]:
    """Rows [start, start + length) of a series, with the targets outside the window marked absent."""
    cut = series.cut(slice(start, start + length))
    position = np.where((target.position >= start) & (target.position < start + length),
                        target.position - start, -1)
    return cut, loc.SeriesTargets(position, target.uv)


# -- augmentation --------------------------------------------------------------------------------------------
def augment_params(seed: int, epoch: int, item: int) -> dict[str, float]:
    """Random in-plane affine and intensity change of one series in one epoch: a pure function of its inputs,
    so a resumed run sees the same augmentations."""
    rng = np.random.default_rng([seed, epoch, item])
    return {"scale": rng.uniform(0.85, 1.15), "angle": rng.uniform(-10, 10),
            "shift_x": rng.uniform(-0.1, 0.1), "shift_y": rng.uniform(-0.1, 0.1),
            "gamma": math.exp(rng.uniform(-0.25, 0.25)),
            "contrast": rng.uniform(0.85, 1.15), "brightness": rng.uniform(-0.05, 0.05),
            "window_start": rng.uniform()}


def augment(images: torch.Tensor, uv: np.ndarray,
            params: dict[str, float]) -> tuple[torch.Tensor, np.ndarray]:
    """Apply one affine (same for every slice) and intensity change to (N, C, H, W) images in [0, 1];
    returns the images and the targets' (u, v) moved with them."""
    angle = math.radians(params["angle"])
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = params["scale"] * np.array([[cos, -sin], [sin, cos]])
    shift = np.array([params["shift_x"], params["shift_y"]])
    theta = torch.tensor(np.concatenate([rotation, shift[:, None]], axis=1), dtype=images.dtype,
                         device=images.device)
    grid = torch.nn.functional.affine_grid(theta[None].expand(len(images), 2, 3), list(images.shape),
                                           align_corners=False)
    moved = torch.nn.functional.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    moved = moved.clamp(0, 1) ** params["gamma"] * params["contrast"] + params["brightness"]
    # grid_sample reads the input at rotation·p_out + shift: a point p_in lands at rotation⁻¹·(p_in - shift)
    p_out = (np.linalg.inv(rotation) @ (2 * uv - 1 - shift).T).T
    return moved, (p_out + 1) / 2


# -- the task ------------------------------------------------------------------------------------------------
class LocatorTask(TrainingTask):
    """One locator run's data, model and optimisation: AdamW with a cosine schedule over the epochs."""

    kind = TaskKind(weights_key="state_dict", panels=PANELS, monitors=MONITORS)

    def __init__(self, config: LocatorConfig, device: torch.device, amp_dtype: torch.dtype | None,
                 split: pd.DataFrame, data: LocatorData, series: tuple[list[int], list[int]],
                 model: loc.Locator, cache_settings: ImageSettings) -> None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        super().__init__(config, device, amp_dtype, split, model, optimizer,
                         torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs),
                         cache_settings)
        self.data, (self.train_series, self.val_series) = data, series
        self.meta = checkpoint_meta(config, data.names)

    def __enter__(self) -> LocatorTask:
        baseline = loc.localisation_metrics(mean_position_predictions(self.data, self.train_series,
                                                                      self.val_series),
                                            self.data.labels, self.data.stack_index)
        self.baseline = {f"baseline_{k}": v for k, v in baseline.items()}
        return self

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the training series in a seeded order, with a progress bar in slices/s."""
        self.model.train()
        order = np.random.default_rng([self.config.seed, epoch]).permutation(self.train_series)
        order = order[:self.config.limit_series]
        sums = np.zeros(2)
        slices = 0
        with EpochBar(epoch, len(order), "series", "slices", self.config.progress) as bar:
            for item in order:
                heatmap_loss, slice_loss, count = training_step(self, int(item), epoch)
                sums += (heatmap_loss, slice_loss)
                slices += count
                bar.advance(slices)
            seconds = bar.seconds()
        heatmap_loss, slice_loss = sums / max(len(order), 1)
        return {"train_loss": heatmap_loss + slice_loss, "train_heatmap_loss": heatmap_loss,
                "train_slice_loss": slice_loss, "train_seconds": seconds,
                "train_slices_per_s": slices / seconds}

    def validate(self, epoch: int) -> tuple[dict[str, Any], pd.DataFrame]:
        """The localisation metrics of the validation series, beside the mean-position baseline's."""
        metrics, predictions, _ = validate(self.model, self.data, self.val_series, self.config.image_size,
                                           self.device)
        return {**metrics, **self.baseline}, predictions

    def checkpoint_meta(self) -> dict[str, Any]:
        return self.meta

    def epoch_line(self, record: dict[str, Any]) -> str:
        return epoch_line(record)


def training_step(task: LocatorTask, item: int, epoch: int) -> tuple[float, float, int]:
    """One optimiser step on one series (a random window of it); returns heatmap loss, slice loss, slices."""
    config, data = task.config, task.data
    series, target = data.series[item], data.targets[item]
    params = augment_params(config.seed, epoch, item)
    if len(series) > config.max_slices:
        start = int(params["window_start"] * (len(series) - config.max_slices + 1))
        series, target = window(series, target, start, config.max_slices)
    images = loc.resize_input(loc.series_input(data.images, series).to(task.device), config.image_size)
    uv = target.uv
    if config.augment:
        images, uv = augment(images, uv, params)
    target = loc.SeriesTargets(target.position, uv)
    inputs = loc.normalise(images).contiguous(memory_format=torch.channels_last)
    task.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(task.device.type, dtype=task.amp_dtype or torch.float32,
                        enabled=task.amp_dtype is not None):
        heatmaps, slice_logits = task.model(inputs, series.layout(task.device))
    heatmap_loss, slice_loss = loc.series_loss(heatmaps.float(), slice_logits.float(), target)
    task.scaler.scale(heatmap_loss + slice_loss).backward()
    task.scaler.step(task.optimizer)
    task.scaler.update()
    return heatmap_loss.item(), slice_loss.item(), len(series)


def validate(model: loc.Locator, data: LocatorData, items: list[int], image_size: int,
             device: torch.device) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Losses and localisation metrics over the given series (every slice), their predictions table and its
    per-point errors (`locator.localisation_table`)."""
    model.eval()
    tables, losses = [], []
    for item in items:
        prediction, (heatmaps, slice_logits) = loc.predict_series(model, data.images, data.series[item],
                                                                  image_size, device)
        losses.append([loss.item() for loss in loc.series_loss(heatmaps, slice_logits, data.targets[item])])
        tables.append(loc.prediction_table(data.series[item], prediction, data.stack_index, data.names))
    predictions = pd.concat(tables, ignore_index=True)
    heatmap_loss, slice_loss = np.mean(losses, axis=0) if losses else (float("nan"), float("nan"))
    points = loc.localisation_table(predictions, data.labels, data.stack_index)
    metrics = loc.summarise_localisation(points)
    losses = {"val_loss": heatmap_loss + slice_loss, "val_heatmap_loss": heatmap_loss,
              "val_slice_loss": slice_loss}
    return {**losses, **{f"val_{k}": v for k, v in metrics.items()}}, predictions, points


def mean_position_predictions(data: LocatorData, train_items: list[int], items: list[int]) -> pd.DataFrame:
    """The trivial baseline every locator must beat: each target at its mean training (u, v), on the slice at
    its mean relative place in the series."""
    present = [(data.targets[i], len(data.series[i])) for i in train_items]
    weights = np.stack([t.present for t, _ in present]).astype(float)
    uv = np.einsum("sk,skc->kc", weights, np.stack([t.uv for t, _ in present])) / weights.sum(0)[:, None]
    relative = np.stack([t.position / max(n - 1, 1) for t, n in present])
    mean_relative = (weights * relative).sum(0) / weights.sum(0)
    tables = []
    for i in items:
        series = data.series[i]
        position = np.rint(mean_relative * (len(series) - 1)).astype(int)
        prediction = loc.SeriesPrediction(position, uv, np.ones(len(position)))
        tables.append(loc.prediction_table(series, prediction, data.stack_index, data.names))
    return pd.concat(tables, ignore_index=True)


# -- runs ----------------------------------------------------------------------------------------------------
def prepare(config: LocatorConfig, run: RunFolder) -> LocatorTask:
    """Open the cache, split, build data, model, optimiser and schedule (all input checks before training)."""
    device = resolve_device(config.device)
    amp_dtype = amp_dtype_for(config.amp, device)
    cache = open_cache(config.cache)
    data = load_data(cache, config.sequence)
    split = load_or_create_split(cache.study_labels(), cache.path, config.folds, config.split_seed,
                                 config.split_file)
    train_studies, val_studies = train_val_studies(split, config.fold)
    train_series = data.indices_of(train_studies, labelled_only=True)
    val_series = data.indices_of(val_studies, labelled_only=True)
    if not train_series or not val_series:
        raise LumbarFastError(f"fold {config.fold} leaves {len(train_series)} training and {len(val_series)} "
                              f"validation series with labelled points for {config.sequence}")
    seed_everything(config.seed)
    model = loc.Locator(config.model, len(data.names), pretrained=config.pretrained, width=config.width)
    model.set_position_prior(*loc.fit_position_prior([data.series[i] for i in train_series],
                                                     [data.targets[i] for i in train_series]))
    model = model.to(device, memory_format=torch.channels_last)
    return LocatorTask(config, device, amp_dtype, split, data, (train_series, val_series), model,
                       cache.settings().images)


def checkpoint_meta(config: LocatorConfig, names: list[tuple[str, str]]) -> dict[str, Any]:
    """What `locate` needs besides the weights."""
    return {"kind": loc.KIND, "model_name": config.model, "sequence": config.sequence, "width": config.width,
            "image_size": config.image_size, "targets": [list(t) for t in names],
            "config": dataclasses.asdict(config)}


def epoch_line(record: dict[str, Any]) -> str:
    """One line per epoch on stdout: losses and the localisation numbers."""
    def number(key: str, digits: int) -> str:
        value = record.get(key)
        return "n/a" if value is None else f"{value:.{digits}f}"
    return (f"epoch {record['epoch']}: train loss {number('train_loss', 3)} "
            f"| val loss {number('val_loss', 3)} "
            f"point error median {number('val_point_error_median_mm', 2)} mm "
            f"p90 {number('val_point_error_p90_mm', 2)} mm "
            f"(mean-position baseline {number('baseline_point_error_median_mm', 2)} mm) "
            f"| slice ±1 {number('val_slice_within_1', 3)} "
            f"| level name {number('val_level_name_accuracy', 3)} "
            f"| {record['train_slices_per_s']:.0f} slices/s")


def train_locator(config: LocatorConfig) -> Path:
    """Start a new locator run for `config`; returns its folder."""
    config.check()
    return training.start(config, prepare)


def resume_locator(run_dir: str | Path) -> Path:
    """Continue a locator run from its last.pt to the same result as an uninterrupted run."""
    return training.resume(run_dir, LocatorConfig.from_record, prepare)


@dataclass(frozen=True)
class RunEvaluation:
    """A locator run's best checkpoint on its validation studies, beside the mean-position baseline."""

    path: Path
    sequence: str
    fold: int
    split: pd.DataFrame
    metrics: dict[str, Any]
    predictions: pd.DataFrame  # prediction_table rows of the validation series
    points: pd.DataFrame  # localisation_table of `predictions`
    baseline_points: pd.DataFrame  # localisation_table of the mean-position baseline's predictions


def read_locator_run(run_dir: Path) -> tuple[RunFolder, LocatorConfig, dict[str, Any], pd.DataFrame]:
    """A locator run's folder, config, best checkpoint and split; one-line errors for anything else."""
    run = RunFolder.open_existing(run_dir)
    try:
        config = LocatorConfig.from_record(run.read_config())
        split = read_split_file(run.file(SPLIT))
    except (TypeError, ValueError, OSError, LumbarFastError) as exc:
        raise LumbarFastError(f"{run_dir} is not a readable locator run: {first_line(exc)}") from None
    return run, config, loc.load_locator_checkpoint(run_dir), split


def evaluate_run(run_dir: str | Path, cache_path: str | Path | None = None,
                 device: str = "auto") -> RunEvaluation:
    """A locator run's best checkpoint on its validation studies (its fold of its split), and the
    mean-position baseline trained on its training studies (for `evaluate`)."""
    run, config, state, split = read_locator_run(Path(run_dir))
    target = resolve_device(device)
    cache = open_cache(cache_path or config.cache)
    loc.check_cache(state, cache, run.path)
    train_studies, val_studies = train_val_studies(split, config.fold)
    require_studies(val_studies, cache.study_labels()["study_id"].to_numpy(), cache.path, run.path)
    data = load_data(cache, config.sequence)
    val_series = data.indices_of(val_studies, labelled_only=True)
    train_series = data.indices_of(train_studies, labelled_only=True)
    if not val_series or not train_series:
        raise LumbarFastError(f"cache {cache.path} has no labelled {config.sequence} series of locator run "
                              f"{run_dir}'s {'validation' if not val_series else 'training'} studies")
    metrics, predictions, points = validate(loc.checkpoint_model(state).to(target), data, val_series,
                                            config.image_size, target)
    baseline = mean_position_predictions(data, train_series, val_series)
    return RunEvaluation(run.path, config.sequence, config.fold, split, metrics, predictions, points,
                         loc.localisation_table(baseline, data.labels, data.stack_index))
