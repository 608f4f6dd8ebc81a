"""What a locator learns from: a sequence's stacks grouped into series in spatial order, and each series'
labelled points (targets), in normalised image coordinates u = x / cols, v = y / rows, so that mapping to the
cache's S×S images and back to original pixels is exact."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lumbar_fast import rsna
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.models.locator import PRIOR_FLAT_STD_MM, PRIOR_MIN_STD_MM, SliceLayout


def locator_targets(sequence: str) -> list[tuple[str, str]]:
    """The (condition, level) points a sequence's locator finds, in output-channel order."""
    conditions = rsna.get_sequence(sequence).conditions
    return [(condition, level) for condition in conditions for level in rsna.LEVELS]


@dataclass
class Series:
    """One series of a sequence: its stack-image rows in spatial order (stacks by their mean position, then
    slices), with their geometry."""

    study_id: int
    series_id: int
    rows: np.ndarray        # rows of stack_images / stack_index, in spatial order
    stack: np.ndarray       # stack id of each row
    prev_rows: np.ndarray   # the neighbouring slice below / above within the same stack (edge repeated)
    next_rows: np.ndarray
    rel_pos: np.ndarray     # slice / (stack length - 1), in [0, 1]
    offset_mm: np.ndarray   # position along the slice normal minus the series' centre, mm

    def __len__(self) -> int:
        return len(self.rows)

    def stack_segments(self) -> list[slice]:
        """The runs of consecutive rows that form one stack each."""
        return _segments(self.stack)

    def cut(self, part: slice) -> Series:
        """The rows in `part` only (a training window), geometry unchanged."""
        return Series(self.study_id, self.series_id, self.rows[part], self.stack[part], self.prev_rows[part],
                      self.next_rows[part], self.rel_pos[part], self.offset_mm[part])

    def layout(self, device: torch.device) -> SliceLayout:
        """What the slice head needs to know about the series besides its images."""
        return SliceLayout(torch.from_numpy(self.rel_pos).float().to(device),
                           torch.from_numpy(self.offset_mm).float().to(device), self.stack_segments())


def series_of(stack_index: pd.DataFrame) -> list[Series]:
    """Group a sequence's stack index into series, each in spatial order: stacks by their mean position along
    the slice normal, slices within a stack by position. Stack ids follow instance numbers, which need not be
    spatial (an axial series acquired as an upper then a lower group of levels), and the slice head reads the
    series as one sequence along the spine."""
    frame = stack_index.reset_index(drop=True).assign(_row=np.arange(len(stack_index)))
    frame["_stack_position"] = frame.groupby(["study_id", "series_id", "stack"])["position"].transform("mean")
    result = []
    for (study_id, series_id), group in frame.groupby(["study_id", "series_id"], sort=True):
        group = group.sort_values(["_stack_position", "stack", "slice"])
        rows = group["_row"].to_numpy()
        stack = group["stack"].to_numpy()
        prev_rows, next_rows, rel_pos = rows.copy(), rows.copy(), np.zeros(len(rows))
        position = group["position"].to_numpy(dtype=float)
        offset_mm = position - (position.min() + position.max()) / 2
        for seg in _segments(stack):
            seg_rows = rows[seg]
            prev_rows[seg] = np.r_[seg_rows[:1], seg_rows[:-1]]
            next_rows[seg] = np.r_[seg_rows[1:], seg_rows[-1:]]
            rel_pos[seg] = np.linspace(0.0, 1.0, len(seg_rows)) if len(seg_rows) > 1 else 0.5
        result.append(Series(int(study_id), int(series_id), rows, stack, prev_rows, next_rows, rel_pos,
                             offset_mm))
    return result


def _segments(stack: np.ndarray) -> list[slice]:
    """The runs of equal consecutive stack ids, as slices."""
    bounds = np.flatnonzero(np.diff(stack)) + 1
    edges = [0, *bounds.tolist(), len(stack)]
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@dataclass
class SeriesTargets:
    """A series' labelled points: for each target, its position in `Series.rows` (-1 if absent) and (u, v)."""

    position: np.ndarray  # (K,) int
    uv: np.ndarray        # (K, 2) float, normalised image coordinates

    @property
    def present(self) -> np.ndarray:
        return self.position >= 0


def to_normalised(x: np.ndarray, y: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Original pixel coordinates → normalised (u, v) = (x / cols, y / rows)."""
    return np.stack([np.asarray(x, float) / cols, np.asarray(y, float) / rows], axis=-1)


def to_original(uv: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (u, v) → original pixel coordinates (x, y), the inverse of `to_normalised`."""
    return uv[..., 0] * cols, uv[..., 1] * rows


def series_targets(series: Series, labels: pd.DataFrame, stack_index: pd.DataFrame,
                   targets: list[tuple[str, str]]) -> SeriesTargets:
    """The targets of one series from the cache's level labels (rows with this study and series)."""
    position = np.full(len(targets), -1)
    uv = np.zeros((len(targets), 2))
    where = {row: i for i, row in enumerate(series.rows)}
    target_index = {t: k for k, t in enumerate(targets)}
    for label in labels.itertuples(index=False):
        k = target_index.get((label.condition, label.level))
        if k is None or position[k] >= 0 or label.stack_row not in where:
            continue
        geometry = stack_index.iloc[label.stack_row]
        position[k] = where[label.stack_row]
        uv[k] = to_normalised(label.x, label.y, geometry["cols"], geometry["rows"])
    return SeriesTargets(position, uv)


def all_targets(series: list[Series], level_labels: pd.DataFrame, stack_index: pd.DataFrame,
                targets: list[tuple[str, str]]) -> list[SeriesTargets]:
    """`series_targets` for every series (series without labels get all targets absent)."""
    by_series = {key: group for key, group in level_labels.groupby(["study_id", "series_id"])}
    empty = level_labels.iloc[:0]
    return [series_targets(s, by_series.get((s.study_id, s.series_id), empty), stack_index, targets)
            for s in series]


def fit_position_prior(series: list[Series], targets: list[SeriesTargets]) -> tuple[np.ndarray, np.ndarray]:
    """Per target, the mean and spread (mm) of its labelled offset from the series' centre over the given
    (training) series; the spread is widened by PRIOR_MIN_STD_MM, and flat where fewer than 2 labels exist."""
    num = len(targets[0].position) if targets else 0
    mean, std = np.zeros(num), np.full(num, PRIOR_FLAT_STD_MM)
    for k in range(num):
        offsets = np.array([s.offset_mm[t.position[k]] for s, t in zip(series, targets, strict=True)
                            if t.present[k]])
        if len(offsets) >= 2:
            mean[k], std[k] = offsets.mean(), np.hypot(offsets.std(), PRIOR_MIN_STD_MM)
    return mean, std


@dataclass
class LocatorData:
    """A sequence's stacks in RAM, grouped into series, with each series' targets."""

    stack_index: pd.DataFrame
    images: np.ndarray
    labels: pd.DataFrame
    series: list[Series]
    targets: list[SeriesTargets]
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
    names = locator_targets(sequence)
    series = series_of(stack_index)
    return LocatorData(stack_index, cache.stack_images(sequence), labels, series,
                       all_targets(series, labels, stack_index, names), names)


def window(series: Series, target: SeriesTargets, start: int,
           length: int) -> tuple[Series, SeriesTargets]:
    """Rows [start, start + length) of a series, with the targets outside the window marked absent."""
    cut = series.cut(slice(start, start + length))
    position = np.where((target.position >= start) & (target.position < start + length),
                        target.position - start, -1)
    return cut, SeriesTargets(position, target.uv)
