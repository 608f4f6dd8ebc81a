"""Stage-1 level localisation: find each level's slice and point in a series, so unlabelled studies get crops.

One model per sequence looks at every slice of a series as a 2.5D image (the slice and its two neighbours)
and predicts, for each target (condition × level, e.g. "left foramen at L4/L5"):
- which slice holds it — a per-slice score from the slice's pooled features and its place in the stack,
  mixed along the stack by a 1-D convolution (the local shape of a disc) and a bidirectional GRU over the
  whole series (which disc it is: counting from the sacrum or the top), plus a positional prior (the
  log-density of a Gaussian over the slice's offset in mm from the series' centre, fitted per target on the
  training series: it tells a left foramen from its mirror image on the right), softmax over the series'
  slices;
- where on that slice — a heatmap (a light FPN decoder on the timm backbone's features, stride 2),
  decoded by argmax plus a parabolic sub-cell refinement.
Points live in normalised image coordinates u = x / cols, v = y / rows, so mapping to the cache's S×S images
and back to original pixels is exact.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from lumbar_fast import rsna
from lumbar_fast.cache import ImageSettings, check_fits
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.model import create_model
from lumbar_fast.runfolder import BEST, RunFolder, atomic_write

#: columns of train_label_coordinates.csv, the format `locate` writes
#: heatmap width of the target Gaussian, in heatmap cells
HEATMAP_SIGMA = 1.0
#: width of the slice target (a Gaussian over neighbouring slices), in slices
SLICE_SIGMA = 0.6
#: input normalisation of the uint8 slices (the 2.5D channels are not RGB, so one mean/std for all)
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25
#: the positional prior's spread never falls below this (mm): about a slice gap, so it never overrules the
#: images between neighbouring slices, only between far-apart ones
PRIOR_MIN_STD_MM = 5.0
#: the spread of a target without enough labels to fit one (mm): the prior is flat across any series
PRIOR_FLAT_STD_MM = 1e4
#: two levels of one condition never share a point: decoded closer than this (in normalised image units,
#: about 14 mm at a typical field of view, half the spacing of neighbouring discs) on the same or a
#: neighbouring slice, they are placed jointly (`separate_levels`)
LEVEL_SEPARATION = 0.06
#: the strongest heatmap peaks per level that the joint placement chooses among
PEAK_CANDIDATES = 4


def locator_targets(sequence: str) -> list[tuple[str, str]]:
    """The (condition, level) points a sequence's locator finds, in output-channel order."""
    conditions = rsna.get_sequence(sequence).conditions
    return [(condition, level) for condition in conditions for level in rsna.LEVELS]


# -- series and targets --------------------------------------------------------------------------------------
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


class SliceLayout(NamedTuple):
    """A series' slice geometry as the model reads it: relative place within each stack (N,), offset in mm
    from the series' centre (N,) and the stacks as runs of rows."""

    rel_pos: torch.Tensor
    offset_mm: torch.Tensor
    segments: list[slice]


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


# -- the model -----------------------------------------------------------------------------------------------
class Locator(nn.Module):
    """A timm backbone with a heatmap decoder (one channel per target) and a stack-aware slice head."""

    def __init__(self, model_name: str, num_targets: int, pretrained: bool = False, width: int = 32) -> None:
        super().__init__()
        try:
            self.backbone = create_model(model_name, in_chans=3, pretrained=pretrained, features_only=True,
                                         out_indices=(0, 1, 2, 3, 4))
        except RuntimeError as exc:  # timm: a model without a feature-extraction mode
            raise LumbarFastError(f"timm model {model_name!r} has no feature maps for a locator: "
                                  f"{exc}") from None
        channels = self.backbone.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.heatmap_head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                          nn.Conv2d(width, num_targets, 1))
        self.slice_embed = nn.Sequential(nn.Linear(channels[-1] + width, width), nn.ReLU(inplace=True))
        self.slice_local = nn.Sequential(nn.Conv1d(width + 1, width, 5, padding=2), nn.ReLU(inplace=True))
        self.slice_context = nn.GRU(width + 1, width, batch_first=True, bidirectional=True)
        self.slice_score = nn.Linear(3 * width, num_targets)

        self.register_buffer("prior_mean", torch.zeros(num_targets))
        self.register_buffer("prior_std", torch.full((num_targets,), PRIOR_FLAT_STD_MM))

    def set_position_prior(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Fix the positional prior: per target, the mean and spread (mm) of its offset from the series'
        centre (`fit_position_prior`)."""
        self.prior_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.prior_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, images: torch.Tensor, layout: SliceLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) of one series' slices → heatmaps (N, K, H/2, W/2) and slice logits (N, K)."""
        features = self.backbone(images)
        top = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1]), strict=True):
            top = lateral(feature) + F.interpolate(top, size=feature.shape[-2:], mode="nearest")
        heatmaps = self.heatmap_head(top)
        pooled = torch.cat([features[-1].mean(dim=(2, 3)), top.mean(dim=(2, 3))], dim=1)
        return heatmaps, self.score_slices(pooled, layout)

    def score_slices(self, pooled: torch.Tensor, layout: SliceLayout) -> torch.Tensor:
        """Per-slice pooled features (N, C) → slice logits (N, K): local mixing within each stack, then a
        GRU along the whole series (stacks in their order), plus the positional prior; run in float32 (it is
        tiny and AMP-unfriendly)."""
        with torch.autocast(pooled.device.type, enabled=False):
            embedded = torch.cat([self.slice_embed(pooled.float()), layout.rel_pos[:, None].float()], dim=1)
            local = torch.cat([self.slice_local(embedded[seg].T[None])[0].T for seg in layout.segments])
            context, _ = self.slice_context(torch.cat([local, embedded[:, -1:]], dim=1)[None])
            logits = self.slice_score(torch.cat([local, context[0]], dim=1))
            deviation = (layout.offset_mm[:, None].float() - self.prior_mean) / self.prior_std
            return logits - 0.5 * deviation**2


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


def series_input(images: np.ndarray, series: Series) -> torch.Tensor:
    """The 2.5D input of every slice of a series: (N, 3, S, S) in [0, 1], channels (previous, slice, next)."""
    stacked = np.stack([images[series.prev_rows], images[series.rows], images[series.next_rows]], axis=1)
    return torch.from_numpy(stacked).float() / 255.0


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → the model's input scale."""
    return (images - PIXEL_MEAN) / PIXEL_STD


def resize_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a batch of (N, C, S, S) inputs to the model's image size (a no-op when it already fits)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# -- losses --------------------------------------------------------------------------------------------------
def gaussian_heatmap(uv: torch.Tensor, height: int, width: int, sigma: float = HEATMAP_SIGMA) -> torch.Tensor:
    """(M, 2) normalised points → (M, H·W) target distributions: a Gaussian at each point, summing to 1."""
    ys = (torch.arange(height, dtype=uv.dtype) + 0.5) / height
    xs = (torch.arange(width, dtype=uv.dtype) + 0.5) / width
    dx = (xs[None, None, :] - uv[:, 0, None, None]) * width
    dy = (ys[None, :, None] - uv[:, 1, None, None]) * height
    weights = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)).reshape(len(uv), -1)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)


def slice_distribution(position: int, length: int, sigma: float = SLICE_SIGMA) -> torch.Tensor:
    """A target distribution over a series' slices centred on `position`."""
    offsets = torch.arange(length, dtype=torch.float32) - position
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def series_loss(heatmaps: torch.Tensor, slice_logits: torch.Tensor,
                target: SeriesTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """(heatmap loss, slice loss) of one series: cross-entropies against the Gaussian targets."""
    present = np.flatnonzero(target.present)
    if len(present) == 0:
        zero = heatmaps.sum() * 0.0
        return zero, zero
    device = heatmaps.device
    k = torch.from_numpy(present).to(device)
    positions = target.position[present]
    height, width = heatmaps.shape[-2:]
    logits = heatmaps[torch.from_numpy(positions).to(device), k].reshape(len(present), -1)
    wanted = gaussian_heatmap(torch.from_numpy(target.uv[present]).float(), height, width).to(device)
    heatmap_loss = -(wanted * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    log_p = F.log_softmax(slice_logits[:, k], dim=0)  # (N, M): softmax over the series' slices
    wanted_slices = torch.stack([slice_distribution(int(p), len(slice_logits)) for p in positions], dim=1)
    wanted_slices = wanted_slices.to(device)
    slice_loss = -(wanted_slices * log_p).sum(dim=0).mean()
    return heatmap_loss, slice_loss


# -- decoding ------------------------------------------------------------------------------------------------
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


@torch.no_grad()
def predict_series(model: Locator, images: np.ndarray, series: Series, size: int,
                   device: torch.device) -> tuple[SeriesPrediction, tuple[torch.Tensor, torch.Tensor]]:
    """Run the model on every slice of one series and decode it; also returns the raw outputs (for losses)."""
    inputs = normalise(resize_input(series_input(images, series).to(device), size))
    inputs = inputs.contiguous(memory_format=torch.channels_last)
    heatmaps, slice_logits = model(inputs, series.layout(device))
    heatmaps, slice_logits = heatmaps.float().cpu(), slice_logits.float().cpu()
    return decode_series(heatmaps, slice_logits), (heatmaps, slice_logits)


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


# -- metrics -------------------------------------------------------------------------------------------------
#: the figures `summarise_localisation` gives (besides the number of points)
LOCALISATION_FIGURES = ("point_error_median_mm", "point_error_p90_mm", "slice_within_1", "slice_exact",
                        "level_name_accuracy")


def localisation_metrics(predictions: pd.DataFrame, labels: pd.DataFrame,
                         stack_index: pd.DataFrame) -> dict[str, float]:
    """Point error in mm (median, p90; in-plane, original pixels × PixelSpacing), slice error, level naming.

    `predictions` as from `prediction_table`; `labels` as the cache's level_labels. A point has the right
    level name when its predicted slice position and point lie nearer to the true point of its own level than
    to any other level's true point of the same condition in that series.
    """
    return summarise_localisation(localisation_table(predictions, labels, stack_index))


def localisation_table(predictions: pd.DataFrame, labels: pd.DataFrame,
                       stack_index: pd.DataFrame) -> pd.DataFrame:
    """One row per predicted point with a label: its ids, error_mm, slice_error (inf in another stack) and
    level_right, so that a bootstrap over studies only re-summarises rows (`summarise_localisation`)."""
    keys = ["study_id", "series_id", "condition", "level"]
    truth = labels.drop_duplicates(keys)[[*keys, "stack", "slice", "x", "y", "stack_row"]]
    merged = predictions.merge(truth, on=keys, suffixes=("", "_true"))
    if merged.empty:
        return pd.DataFrame({**{key: pd.Series(dtype=object) for key in keys},
                             "error_mm": pd.Series(dtype=float), "slice_error": pd.Series(dtype=float),
                             "level_right": pd.Series(dtype=bool)})
    geometry = stack_index.iloc[merged["stack_row"].to_numpy()]
    spacing_row, spacing_col = geometry["spacing_row"].to_numpy(), geometry["spacing_col"].to_numpy()
    error_mm = np.hypot((merged["x"] - merged["x_true"]).to_numpy() * spacing_col,
                        (merged["y"] - merged["y_true"]).to_numpy() * spacing_row)
    same_stack = (merged["stack"] == merged["stack_true"]).to_numpy()
    slice_error = np.where(same_stack, (merged["slice"] - merged["slice_true"]).abs().to_numpy(), np.inf)
    return merged[keys].assign(error_mm=error_mm, slice_error=slice_error.astype(float),
                               level_right=_level_name_right(merged, truth, stack_index))


def summarise_localisation(table: pd.DataFrame) -> dict[str, float]:
    """The localisation figures of a `localisation_table` (NaN for an empty one)."""
    if table.empty:
        return {"points": 0, **{name: float("nan") for name in LOCALISATION_FIGURES}}
    error_mm, slice_error = table["error_mm"].to_numpy(), table["slice_error"].to_numpy()
    return {
        "points": int(len(table)),
        "point_error_median_mm": float(np.median(error_mm)),
        "point_error_p90_mm": float(np.percentile(error_mm, 90)),
        "slice_within_1": float(np.mean(slice_error <= 1)),
        "slice_exact": float(np.mean(slice_error == 0)),
        "level_name_accuracy": float(np.mean(table["level_right"].to_numpy(dtype=bool))),
    }


def _level_name_right(merged: pd.DataFrame, truth: pd.DataFrame, stack_index: pd.DataFrame) -> np.ndarray:
    """For each predicted point: is the nearest true point (3-D, mm) of its condition the one of its level?"""
    world = _world_mm(stack_index)
    truth_world = world[truth["stack_row"].to_numpy()] + _in_plane_mm(truth, stack_index, "stack_row")
    truth = truth.assign(wx=truth_world[:, 0], wy=truth_world[:, 1], wz=truth_world[:, 2])
    pred_rows = _rows_of(merged, stack_index)
    pred_world = world[pred_rows] + _in_plane_mm(merged.assign(_r=pred_rows), stack_index, "_r")
    groups = {key: g for key, g in truth.groupby(["study_id", "series_id", "condition"])}
    right = np.zeros(len(merged), dtype=bool)
    for i, row in enumerate(merged.itertuples(index=False)):
        candidates = groups[(row.study_id, row.series_id, row.condition)]
        distance = np.linalg.norm(candidates[["wx", "wy", "wz"]].to_numpy() - pred_world[i], axis=1)
        right[i] = candidates["level"].to_numpy()[np.argmin(distance)] == row.level
    return right


def _world_mm(stack_index: pd.DataFrame) -> np.ndarray:
    """A per-row offset (mm) that separates stacks and slices: position along the stack, stacks far apart."""
    offset = np.zeros((len(stack_index), 3))
    offset[:, 2] = stack_index["position"].to_numpy() + 1e4 * stack_index["stack"].to_numpy()
    return offset


def _in_plane_mm(frame: pd.DataFrame, stack_index: pd.DataFrame, row_column: str) -> np.ndarray:
    geometry = stack_index.iloc[frame[row_column].to_numpy()]
    return np.stack([frame["x"].to_numpy() * geometry["spacing_col"].to_numpy(),
                     frame["y"].to_numpy() * geometry["spacing_row"].to_numpy(),
                     np.zeros(len(frame))], axis=1)


def _rows_of(frame: pd.DataFrame, stack_index: pd.DataFrame) -> np.ndarray:
    """The stack_index row of each (study, series, stack, slice) in `frame`."""
    index = stack_index.reset_index(drop=True).assign(_row=np.arange(len(stack_index)))
    keyed = frame[["study_id", "series_id", "stack", "slice"]].merge(
        index[["study_id", "series_id", "stack", "slice", "_row"]], how="left")
    return keyed["_row"].to_numpy()


# -- runs, checkpoints and the locate API --------------------------------------------------------------------
#: the `kind` a locator run's config.json and checkpoints carry (classifier runs carry none)
KIND = "locator"


def is_locator_run(run_dir: Path) -> bool:
    """Whether a folder holds a `train-locator` run: its config.json says so."""
    try:
        return RunFolder(Path(run_dir)).read_config().get("kind") == KIND
    except (OSError, ValueError, KeyError):
        return False  # not a run at all: whoever opens it next names what is wrong


def load_locator_checkpoint(run_dir: Path) -> dict:
    """The best checkpoint of a locator run; a one-line error for any other folder."""
    state = RunFolder.open_existing(Path(run_dir)).load_checkpoint(BEST)
    if state.get("kind") != KIND:
        raise LumbarFastError(f"{run_dir} is not a locator run (train it with `lumbar-fast train-locator`)")
    return state


def check_cache(state: dict, cache, run: Path) -> None:
    """Refuse, in one line, a cache whose stack images differ in size from those the locator run trained on
    (its checkpoint's `cache_settings`); slices per crop, crop widths and side convention shape only the
    level crops, which a locator never reads."""
    check_fits(ImageSettings.from_record(state["cache_settings"]), cache, run, state["sequence"],
               fields=("size",))


def checkpoint_model(state: dict) -> Locator:
    """The Locator stored in a locator checkpoint (its weights loaded, in eval mode)."""
    model = Locator(state["model_name"], len(state["targets"]), width=state["width"])
    try:
        model.load_state_dict(state["state_dict"])
    except RuntimeError as exc:  # written by another version of the Locator
        raise LumbarFastError(f"the locator checkpoint does not fit this version's model: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.eval()


def locate(runs: list[Path], cache, device: str = "auto") -> pd.DataFrame:
    """Coordinates (train_label_coordinates.csv format) for every study of `cache`, from locator runs;
    `device` auto, cuda or cpu."""
    from lumbar_fast.inference import resolve_device

    device = resolve_device(device)
    tables = []
    for run in runs:
        state = load_locator_checkpoint(run)
        sequence = state["sequence"]
        if sequence not in cache.sequences():
            raise LumbarFastError(f"cache {cache.path} has no {sequence} stacks for locator run {run}")
        check_cache(state, cache, run)
        model = checkpoint_model(state).to(device)
        stack_index, images = cache.stack_index(sequence), cache.stack_images(sequence)
        targets = [tuple(t) for t in state["targets"]]
        for series in series_of(stack_index):
            prediction, _ = predict_series(model, images, series, state["image_size"], device)
            tables.append(prediction_table(series, prediction, stack_index, targets))
    if not tables:
        return pd.DataFrame(columns=list(rsna.COORDINATE_COLUMNS))
    return to_coordinates_csv(pd.concat(tables, ignore_index=True))


def write_coordinates(coordinates: pd.DataFrame, path: Path) -> None:
    """Write located points as a train_label_coordinates.csv file, atomically (never a half-written file)."""
    columns = list(rsna.COORDINATE_COLUMNS)
    atomic_write(Path(path), lambda tmp: coordinates.to_csv(tmp, index=False, columns=columns))
