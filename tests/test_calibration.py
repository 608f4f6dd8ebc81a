"""Temperature scaling: the tempered probabilities, the fit, calibration.json at the end of training, and
evaluate/predict applying each run's temperature."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from lumbar_fast import rsna
from lumbar_fast.cache import open_cache
from lumbar_fast.calibration import CALIBRATION, calibrate, fit_temperature, read_temperature, temper
from lumbar_fast.classifier.runs import read_run, resume
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.metrics import weighted_log_loss
from lumbar_fast.predict import InferenceOptions, predict_crops
from lumbar_fast.runfolder import CONFIG, PREDICTIONS


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def drawn(n: int, sharpness: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits), the true probabilities, and a model's that are `sharpness` times
    too confident."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3)) * 2
    truth = softmax(logits)
    labels = np.array([rng.choice(3, p=p) for p in truth])
    return labels, truth, softmax(logits * sharpness)


def test_tempered_probabilities_are_the_softmax_of_the_scaled_logits():
    logits = np.random.default_rng(1).normal(size=(50, 3)) * 3
    for temperature in (0.5, 1.0, 2.5):
        assert np.allclose(temper(softmax(logits), temperature), softmax(logits / temperature))
    assert temper(np.zeros((0, 3)), 2.0).shape == (0, 3)


@pytest.mark.parametrize("sharpness", [0.5, 2.5])
def test_the_fit_finds_the_temperature_that_undoes_over_and_under_confidence(sharpness):
    labels, truth, model = drawn(3000, sharpness)
    temperature = fit_temperature(labels, model, class_weights=(1, 1, 1))
    assert temperature == pytest.approx(sharpness, rel=0.1)
    fitted = weighted_log_loss(labels, temper(model, temperature), (1, 1, 1))
    assert fitted < weighted_log_loss(labels, model, (1, 1, 1))
    assert fitted == pytest.approx(weighted_log_loss(labels, truth, (1, 1, 1)), abs=0.01)


def predictions_table(labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    columns = {f"p_{name}": probs[:, i] for i, name in enumerate(rsna.SUBMISSION_COLUMNS)}
    return pd.DataFrame({"severity": labels, **columns})


def test_calibrate_fits_the_metrics_weighted_loss_on_labelled_rows_only():
    labels, _, model = drawn(2000, 2.0, seed=2)
    labels[:100] = rsna.MISSING
    fitted = calibrate("temperature", predictions_table(labels, model))
    assert fitted.items == 1900 and fitted.loss_after < fitted.loss_before
    assert fitted.temperature == pytest.approx(fit_temperature(labels[100:], model[100:]))
    assert fitted.loss_before == pytest.approx(weighted_log_loss(labels, model))
    plain = calibrate("none", predictions_table(labels, model))
    assert plain.temperature == 1.0 and plain.loss_after == plain.loss_before
    with pytest.raises(LumbarFastError, match="--calibration must be one of none, temperature"):
        calibrate("isotonic", predictions_table(labels, model))


def test_an_unfinished_run_is_uncalibrated_only_when_it_asked_for_none(tmp_path):
    """Without calibration.json (a run still training): T = 1 for `none`; one that will be calibrated is
    refused until it finishes; a damaged file is refused."""
    assert read_temperature(tmp_path, "none") == 1.0
    with pytest.raises(LumbarFastError, match="no calibration.json: its temperature calibration is fitted"):
        read_temperature(tmp_path, "temperature")
    (tmp_path / CALIBRATION).write_text('{"temperature": -2}')
    with pytest.raises(LumbarFastError, match="temperature -2.0; it must be positive"):
        read_temperature(tmp_path, "temperature")
    (tmp_path / CALIBRATION).write_text("{}")
    with pytest.raises(LumbarFastError, match=f"cannot read {tmp_path / CALIBRATION}"):
        read_temperature(tmp_path, "temperature")


def test_nothing_to_fit_leaves_the_run_uncalibrated():
    _, _, model = drawn(50, 2.0)
    empty = calibrate("temperature", predictions_table(np.full(50, rsna.MISSING), model))
    assert (empty.method, empty.temperature, empty.items) == ("none", 1.0, 0)
    assert "nan" not in json.dumps(empty.__dict__).lower()


def test_training_ends_with_its_calibration_and_predict_applies_each_runs_temperature(
        trained_runs, synth_cache, tmp_path):
    """A run ends with calibration.json (the default recipe's: none, T = 1); `--calibration temperature` fits
    T on the best epoch's validation predictions, also when a finished run is resumed; predict scales each
    run's probabilities by its T."""
    run_dir = trained_runs["sag_t2"]
    assert json.loads((run_dir / CALIBRATION).read_text())["method"] == "none"
    assert read_run(run_dir).temperature == 1.0

    copies = {}
    for temperature in (1.0, 2.0):
        copies[temperature] = shutil.copytree(run_dir, tmp_path / f"t{temperature}")
        (copies[temperature] / CALIBRATION).write_text(json.dumps({"temperature": temperature}))
    cache = open_cache(synth_cache)
    rows = np.arange(len(cache.level_labels("sag_t2")))
    plain, scaled = (predict_crops(read_run(copies[t]), cache, rows, InferenceOptions(device="cpu"))
                     for t in (1.0, 2.0))
    assert np.allclose(scaled, temper(plain, 2.0)) and not np.allclose(scaled, plain)

    refit = copies[1.0]
    record = json.loads((refit / CONFIG).read_text())
    record["arguments"]["calibration"] = "temperature"
    (refit / CONFIG).write_text(json.dumps(record))
    resume(refit)  # finished: only the closing step runs
    fitted = json.loads((refit / CALIBRATION).read_text())
    assert fitted == pytest.approx(calibrate("temperature", pd.read_csv(refit / PREDICTIONS)).__dict__)
    assert fitted["temperature"] != 1.0 and fitted["loss_after"] <= fitted["loss_before"]
    assert read_run(refit).temperature == fitted["temperature"]
