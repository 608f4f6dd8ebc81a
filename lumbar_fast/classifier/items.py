"""The classifier's items: which image and class each training or validation item is, in the level view
(a 2.5D crop per labelled level) or the seed's slice view (the whole labelled slice), and the negative
controls that must not learn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lumbar_fast import distributed, rsna
from lumbar_fast.cache import CacheReader
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.npy import write_npy
from lumbar_fast.runfolder import RunFolder

#: the whole-slice view's image array, built once per run from the cache's stacks
SLICE_IMAGES = "slice_images.npy"


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
    return in_view(level_items(cache, config), cache, config, run)


def level_items(cache: CacheReader, config: TrainConfig) -> Items:
    """Every labelled item of the sequence as a level crop (the control's crop under level-off)."""
    labels = cache.level_labels(config.sequence).reset_index(drop=True)
    rows = adjacent_level_rows(labels) if config.control == "level-off" else np.arange(len(labels))
    keep = (labels["severity"].to_numpy() != rsna.MISSING) & (rows >= 0)
    if not keep.any():
        raise LumbarFastError(f"the cache {cache.path} has no labelled items for sequence {config.sequence}")
    table = labels.loc[keep, ["study_id", "series_id", "condition", "level", "severity"]]
    return Items(table.reset_index(drop=True), rows[keep].astype(np.int64),
                 labels.loc[keep, "severity"].to_numpy(np.int64),
                 Path(cache.array_path(config.sequence, "levels")))


def in_view(items: Items, cache: CacheReader, config: TrainConfig, run: RunFolder) -> Items:
    """Level items as they are, or moved to the slice view (which writes its images into the run folder:
    call it after every check that can refuse the run)."""
    if config.view != "slice":
        return items
    path = run.file(SLICE_IMAGES)
    stack_rows = cache.level_labels(config.sequence)["stack_row"].to_numpy()[items.rows]
    distinct, item_rows = np.unique(stack_rows, return_inverse=True)
    distributed.on_main(write_slice_images, cache, config.sequence, distinct, path)
    return Items(items.table, item_rows.astype(np.int64), items.labels, path)


def write_slice_images(cache: CacheReader, sequence: str, stack_rows: np.ndarray, path: Path) -> None:
    """The seed's whole-slice view: each given stack row with its neighbours as channels, in one
    (N, S, S, C) .npy written once (items of one slice share its row)."""
    if path.is_file():
        return
    channels = cache.slices_per_crop()
    stacks = np.load(cache.array_path(sequence, "stacks"), mmap_mode="r")
    neighbours = slice_neighbours(cache.stack_index(sequence), stack_rows, channels)
    write_npy(path, (len(stack_rows), *stacks.shape[1:], channels),
              lambda out: _gather_slices(stacks, neighbours, out))


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
