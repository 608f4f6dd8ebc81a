"""From the locator's outputs to points: each target's most likely slice, then its point on that slice's
heatmap (argmax plus a parabolic sub-cell refinement), the levels of one condition kept apart; and the
predictions as tables (one row per target) and as train_label_coordinates.csv rows."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lumbar_fast import rsna
from lumbar_fast.locator.targets import Series, to_original

#: two levels of one condition never share a point: decoded closer than this (in normalised image units,
#: about 14 mm at a typical field of view, half the spacing of neighbouring discs) on the same or a
#: neighbouring slice, they are placed jointly (`separate_levels`)
LEVEL_SEPARATION = 0.06
#: the strongest heatmap peaks per level that the joint placement chooses among
PEAK_CANDIDATES = 4


def decode_heatmap(logits: torch.Tensor) -> np.ndarray:
    """(K, H, W) heatmap logits → (K, 2) normalised points: the argmax cell, refined per axis by the vertex
    of the parabola through the log-probabilities of it and its two neighbours (exact for a Gaussian peak)."""
    num, height, width = logits.shape
    peak = logits.reshape(num, -1).argmax(dim=1).numpy()
    grid = logits.double().numpy()
    return np.stack([_refined_point(grid[k], *divmod(int(peak[k]), width)) for k in range(num)])


def heatmap_peaks(log_p: torch.Tensor, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The `count` strongest local maxima of one (H, W) heatmap: their log-probabilities (m,) and refined
    points (m, 2), strongest first (the first is `decode_heatmap`'s point)."""
    width = log_p.shape[-1]
    is_peak = log_p == F.max_pool2d(log_p[None, None], 3, stride=1, padding=1)[0, 0]
    cells = np.flatnonzero(is_peak.flatten().numpy())
    values = log_p.flatten().double().numpy()[cells]
    order = np.lexsort((cells, -values))[:count]  # strongest first, ties by cell as argmax breaks them
    grid = log_p.double().numpy()
    points = np.stack([_refined_point(grid, *divmod(int(cell), width)) for cell in cells[order]])
    return values[order], points


def _refined_point(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    """Normalised (u, v) of cell (row, col) of an (H, W) grid, refined by the parabola per axis."""
    height, width = grid.shape
    dx = _parabola_vertex(grid[row, col - 1:col + 2]) if 0 < col < width - 1 else 0.0
    dy = _parabola_vertex(grid[row - 1:row + 2, col]) if 0 < row < height - 1 else 0.0
    return np.array([(col + 0.5 + dx) / width, (row + 0.5 + dy) / height])


def _parabola_vertex(values: np.ndarray) -> float:
    """Offset (in cells, within ±0.5) of the vertex of the parabola through three equally spaced values."""
    left, centre, right = values
    curvature = left - 2 * centre + right
    if curvature >= 0:  # flat or not a maximum: keep the cell centre
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


@dataclass
class SeriesPrediction:
    """A series' decoded targets: chosen position in `Series.rows`, its (u, v), that slice's probability."""

    position: np.ndarray  # (K,)
    uv: np.ndarray        # (K, 2)
    confidence: np.ndarray  # (K,) softmax probability of the chosen slice


def decode_series(heatmaps: torch.Tensor, slice_logits: torch.Tensor) -> SeriesPrediction:
    """For each target: the most likely slice of the series, then the point on that slice's heatmap, with
    the levels of one condition kept apart (`separate_levels`)."""
    probs = F.softmax(slice_logits.float(), dim=0)
    confidence, position = probs.max(dim=0)
    chosen = heatmaps[position, torch.arange(heatmaps.shape[1])].float()
    log_p = F.log_softmax(chosen.flatten(1), dim=1).view_as(chosen)
    uv = separate_levels(log_p, position.numpy())
    return SeriesPrediction(position.numpy(), uv, confidence.numpy())


def separate_levels(log_p: torch.Tensor, position: np.ndarray) -> np.ndarray:
    """Points (K, 2) from heatmap log-probabilities (K, H, W) such that no two levels of one condition on the
    same or neighbouring slices lie within LEVEL_SEPARATION: on a sagittal slice the five discs look alike,
    and a less certain level's heatmap can peak on its neighbour's disc. Per condition, among each level's
    PEAK_CANDIDATES strongest peaks, the assignment with the highest summed log-probability that keeps the
    levels apart (each level's own peak when they already are). Targets come in runs of the five levels of
    each condition (`locator_targets`)."""
    result = decode_heatmap(log_p)  # each level's own strongest peak
    levels = len(rsna.LEVELS)
    for first in range(0, len(log_p), levels):
        members = range(first, first + levels)
        rivals = [(a, b) for a, b in itertools.combinations(range(levels), 2)
                  if abs(position[members[a]] - position[members[b]]) <= 1]
        if all(np.hypot(*(result[members[a]] - result[members[b]])) >= LEVEL_SEPARATION for a, b in rivals):
            continue  # already apart
        group = [heatmap_peaks(log_p[k], PEAK_CANDIDATES) for k in members]
        choices = itertools.product(*(range(len(values)) for values, _ in group))
        best = max(choices, key=lambda choice: _joint_log_p(choice, group, rivals))
        result[first:first + levels] = [points[c] for (_, points), c in zip(group, best, strict=True)]
    return result


def _joint_log_p(choice: tuple[int, ...], peaks: list[tuple[np.ndarray, np.ndarray]],
                 rivals: list[tuple[int, int]]) -> float:
    """Summed log-probability of one peak per level, or -inf when two rival levels are too close."""
    points = [points[c] for (_, points), c in zip(peaks, choice, strict=True)]
    if any(np.hypot(*(points[a] - points[b])) < LEVEL_SEPARATION for a, b in rivals):
        return -np.inf
    return float(sum(values[c] for (values, _), c in zip(peaks, choice, strict=True)))


def prediction_table(series: Series, prediction: SeriesPrediction, stack_index: pd.DataFrame,
                     targets: list[tuple[str, str]]) -> pd.DataFrame:
    """A series' predictions, one row per target: ids, condition, level, stack, slice, instance, x, y and
    confidence."""
    rows = series.rows[prediction.position]
    geometry = stack_index.iloc[rows]
    x, y = to_original(prediction.uv, geometry["cols"].to_numpy(), geometry["rows"].to_numpy())
    return pd.DataFrame({
        "study_id": series.study_id, "series_id": series.series_id,
        "condition": [c for c, _ in targets], "level": [lv for _, lv in targets],
        "stack": geometry["stack"].to_numpy(), "slice": geometry["slice"].to_numpy(),
        "instance_number": geometry["instance_number"].to_numpy().astype(np.int64),
        "x": x, "y": y, "confidence": prediction.confidence,
    })


def to_coordinates_csv(predictions: pd.DataFrame) -> pd.DataFrame:
    """Predictions → train_label_coordinates.csv rows: per (study, condition, level) the surest series'."""
    best = (predictions.sort_values("confidence", ascending=False)
            .drop_duplicates(["study_id", "condition", "level"])
            .sort_values(["study_id", "condition", "level"]))
    return pd.DataFrame({
        "study_id": best["study_id"].astype(np.int64), "series_id": best["series_id"].astype(np.int64),
        "instance_number": best["instance_number"].astype(np.int64),
        "condition": best["condition"].map(rsna.CONDITION_TITLES),
        "level": best["level"].map(rsna.LEVEL_TITLES),
        "x": best["x"], "y": best["y"],
    }).reset_index(drop=True)
