"""How well points are located: per point, the in-plane error in mm, the slice error and whether the point
names the right level; their summary; and the mean-position baseline every locator must beat."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lumbar_fast.locator.decode import SeriesPrediction, prediction_table
from lumbar_fast.locator.targets import LocatorData

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
    return summarise_localisation(point_errors(predictions, labels, stack_index))


def point_errors(predictions: pd.DataFrame, labels: pd.DataFrame,
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
    """The localisation figures of a `point_errors` (NaN for an empty one)."""
    if table.empty:
        return {"points": 0, **{name: float("nan") for name in LOCALISATION_FIGURES}}
    error_mm, slice_error = table["error_mm"].to_numpy(), table["slice_error"].to_numpy()
    return {
        "points": len(table),
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
        prediction = SeriesPrediction(position, uv, np.ones(len(position)))
        tables.append(prediction_table(series, prediction, data.stack_index, data.names))
    return pd.concat(tables, ignore_index=True)
