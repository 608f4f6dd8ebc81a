"""Temperature scaling (Guo et al. 2017): one number per run that softens or sharpens its probabilities,
fitted on the run's validation fold to the competition's weighted log loss, applied by evaluate and predict.

A classifier trained on raters' noisy grades with a weighted loss is confident where it should not be (or
timid where it may be bold); the log loss punishes both. Dividing the logits by T keeps every ranking and
moves only the confidence. T is fitted at the end of training on the best epoch's validation predictions
(val_predictions.csv) and stored in the run's calibration.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar_fast import rsna
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.metrics import weighted_log_loss
from lumbar_fast.runfolder import atomic_write

CALIBRATION = "calibration.json"
CALIBRATIONS = ("none", "temperature")
#: the search interval of the inverse temperature 1/T (the log loss is convex in it)
INVERSE_TEMPERATURE_RANGE = (0.05, 20.0)


def temper(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / T) from softmax(logits): p^(1/T), renormalised per row (exact, as log p differs from
    the logits by a per-row constant)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0 or len(p) == 0:
        return p
    scaled = np.log(np.clip(p, 1e-300, 1.0)) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    tempered = np.exp(scaled)
    return tempered / tempered.sum(axis=1, keepdims=True)


def fit_temperature(labels: np.ndarray, probabilities: np.ndarray,
                    class_weights: Sequence[float] = rsna.CLASS_WEIGHTS, tolerance: float = 1e-4) -> float:
    """The T that minimises the weighted log loss of `temper(probabilities, T)`: golden-section search over
    the inverse temperature, in which the loss is convex."""
    def loss(inverse: float) -> float:
        return weighted_log_loss(labels, temper(probabilities, 1.0 / inverse), class_weights)

    low, high = INVERSE_TEMPERATURE_RANGE
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low + (1 - ratio) * (high - low), low + ratio * (high - low)
    loss_a, loss_b = loss(a), loss(b)
    while high - low > tolerance:
        if loss_a <= loss_b:
            high, b, loss_b = b, a, loss_a
            a = low + (1 - ratio) * (high - low)
            loss_a = loss(a)
        else:
            low, a, loss_a = a, b, loss_b
            b = low + ratio * (high - low)
            loss_b = loss(b)
    return 1.0 / ((low + high) / 2)


@dataclass(frozen=True)
class Calibration:
    """A run's temperature and the validation figures that chose it (calibration.json)."""

    method: str  # none or temperature
    temperature: float
    items: int  # validation items it was fitted on
    loss_before: float  # the weighted log loss of those items, as predicted and after scaling
    loss_after: float

    def line(self) -> str:
        """One line for the end of training."""
        if self.method == "none":
            return "calibration: none (probabilities as the model gives them)"
        return (f"calibration: temperature {self.temperature:.3f} fitted on {self.items} validation items "
                f"(weighted log loss {self.loss_before:.4f} -> {self.loss_after:.4f})")


def calibrate(method: str, predictions: pd.DataFrame) -> Calibration:
    """The run's calibration by `method` from its validation predictions table (severity, p_* columns).

    A fitted temperature is kept only where it lowers the validation loss; with no labelled item there is
    nothing to fit, and the run stays uncalibrated (method none)."""
    if method not in CALIBRATIONS:
        raise LumbarFastError(f"--calibration must be one of {', '.join(CALIBRATIONS)}")
    labelled = predictions[predictions["severity"] != rsna.MISSING]
    if labelled.empty:
        return Calibration("none", 1.0, 0, 0.0, 0.0)
    labels = labelled["severity"].to_numpy(dtype=np.int64)
    probs = labelled[list(rsna.PROBABILITY_COLUMNS)].to_numpy(dtype=np.float64)
    before = weighted_log_loss(labels, probs)
    temperature = fit_temperature(labels, probs) if method == "temperature" else 1.0
    after = weighted_log_loss(labels, temper(probs, temperature))
    if after > before:
        temperature, after = 1.0, before
    return Calibration(method, temperature, len(labels), before, after)


def write_calibration(run_dir: Path, calibration: Calibration) -> None:
    """calibration.json in the run folder."""
    text = json.dumps(asdict(calibration), indent=2) + "\n"
    atomic_write(Path(run_dir) / CALIBRATION, lambda tmp: tmp.write_text(text))


def read_temperature(run_dir: Path, method: str) -> float:
    """The temperature of a run recorded with calibration `method`: 1 for `none` without calibration.json
    (a run still training); a run that should be calibrated and is not yet is a one-line error."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        if method == "none":
            return 1.0
        raise LumbarFastError(f"run {run_dir} has no {CALIBRATION}: its {method} calibration is fitted when "
                              f"training ends; let it finish (or --resume it)")
    try:
        temperature = float(json.loads(path.read_text())["temperature"])
    except (ValueError, KeyError, TypeError) as exc:
        raise LumbarFastError(f"cannot read {path}: {exc}") from None
    if not temperature > 0:
        raise LumbarFastError(f"{path} holds temperature {temperature}; it must be positive")
    return temperature
