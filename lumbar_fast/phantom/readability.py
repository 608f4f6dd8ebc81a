"""How well the pixels carry the real-difficulty phantom's latent: a plain measurement on each cached level
crop against the narrowing the answer key says was drawn there.

The measurement is the mean of the crop's labelled slice within a radius of its centre (the labelled point)
that stays inside the structure at every drawn size (RADIUS_MM), over the slice's 99.5th percentile; a cubic
in it, fitted per metric group, predicts the drawn narrowing, and its R² says how much of the narrowing a
model could read from the crop (docs/phantom.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lumbar_fast import rsna
from lumbar_fast.cache import open_cache
from lumbar_fast.csvfile import read_csv
from lumbar_fast.phantom.answer_key import ANSWER_KEY_CSV

#: per metric group: the canal is 12-16 mm deep and a foramen 8-10 mm, a recess only 6.4-8.4 mm wide
RADIUS_MM: dict[str, float] = {"spinal": 4.0, "foraminal": 4.0, "subarticular": 2.5}
FIT_DEGREE = 3


def centre_signal(crops: np.ndarray, radius_px: float) -> np.ndarray:
    """Per crop (N, size, size, channels): the middle channel's mean within `radius_px` of the centre,
    relative to that channel's 99.5th percentile."""
    middle = crops[..., crops.shape[-1] // 2].astype(np.float64)
    size = middle.shape[1]
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    inside = rows ** 2 + cols ** 2 <= radius_px ** 2
    return middle[:, inside].mean(axis=1) / np.maximum(np.percentile(middle, 99.5, axis=(1, 2)), 1.0)


def crop_measurements(cache_path: Path, answer_key_path: Path) -> pd.DataFrame:
    """One row per cached level crop: study_id, condition, level, group, signal (centre_signal) and the
    answer key's narrowing."""
    reader = open_cache(cache_path)
    crop_mm = reader.attrs["params"]["crop_mm"]
    tables = []
    for seq in reader.sequences():
        labels = reader.level_labels(seq)[["study_id", "condition", "level"]]
        images = reader.level_images(seq)
        radius = RADIUS_MM[rsna.CONDITION_GROUP[rsna.get_sequence(seq).conditions[0]]]
        labels["signal"] = centre_signal(images, radius / crop_mm[seq] * images.shape[1])
        tables.append(labels)
    key = read_csv(answer_key_path, ANSWER_KEY_CSV, "answer key")[["study_id", "condition", "level",
                                                                   "narrowing"]]
    table = pd.concat(tables).merge(key, on=["study_id", "condition", "level"], validate="one_to_one")
    table["group"] = table["condition"].map(rsna.CONDITION_GROUP)
    return table


def r_squared(signal: np.ndarray, narrowing: np.ndarray) -> float:
    """R² of the narrowing predicted by a cubic in the signal (least squares)."""
    fit = np.polyval(np.polyfit(signal, narrowing, FIT_DEGREE), signal)
    return float(1.0 - np.sum((narrowing - fit) ** 2) / np.sum((narrowing - narrowing.mean()) ** 2))


def readability_table(measurements: pd.DataFrame) -> pd.DataFrame:
    """Per metric group: crops, the narrowing's spread, the signal's correlation with it, the cubic's R²."""
    rows = [{"group": group, "crops": len(rows), "narrowing_sd": float(rows["narrowing"].std()),
             "correlation": float(np.corrcoef(rows["signal"], rows["narrowing"])[0, 1]),
             "r_squared": r_squared(rows["signal"].to_numpy(), rows["narrowing"].to_numpy())}
            for group, rows in measurements.groupby("group", sort=False)]
    return pd.DataFrame(rows).set_index("group")
