"""evaluate: per-item losses, baselines with per-run priors, tables; and the round trip on the phantom —
ingest → train three runs → predict → score gives the competition score evaluate reports."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lumbar_fast import metrics, rsna
from lumbar_fast.evaluate import format_table, item_losses, sequence_summary
from lumbar_fast.predict import PROBABILITY_COLUMNS


def test_item_losses_are_the_weighted_log_loss_terms():
    crops = pd.DataFrame({"severity": [0, 1, 2, rsna.MISSING]})
    probs = np.array([[0.5, 0.25, 0.25], [0.2, 0.4, 0.4], [0.1, 0.1, 0.8], [1 / 3] * 3])
    crops[list(PROBABILITY_COLUMNS)] = probs
    losses = item_losses(crops)
    assert np.allclose(losses[:3], [-np.log(0.5), -2 * np.log(0.4), -4 * np.log(0.8)])
    assert np.isnan(losses[3])
    labelled = crops["severity"].to_numpy() != rsna.MISSING
    weights = np.asarray(rsna.CLASS_WEIGHTS)[crops["severity"][labelled]]
    assert np.isclose(losses[labelled].sum() / weights.sum(),
                      metrics.weighted_log_loss(crops["severity"], probs))


def test_sequence_summary_scores_each_item_against_its_own_run_prior():
    y = np.array([0, 0, 1, 2, rsna.MISSING])
    p = np.tile([0.6, 0.3, 0.1], (5, 1))
    priors = np.array([[0.8, 0.1, 0.1]] * 2 + [[0.5, 0.4, 0.1]] * 3)
    summary = sequence_summary(y, p, priors)
    assert summary["n"] == 4
    assert np.isclose(summary["prior_weighted_log_loss"], metrics.weighted_log_loss(y[:4], priors[:4]))
    assert summary["majority_accuracy"] == 0.5  # the mean prior's majority class: Normal/Mild
    assert np.isclose(summary["weighted_log_loss"], metrics.weighted_log_loss(y, p))


def test_bootstrap_intervals_match_one_statistic_at_a_time():
    study_ids = np.repeat(np.arange(8), 3)
    values = np.random.default_rng(0).random(len(study_ids))

    def both(rows: np.ndarray, _copies: np.ndarray) -> dict[str, float]:
        return {"mean": float(values[rows].mean()), "max": float(values[rows].max())}

    together = metrics.bootstrap_intervals(study_ids, both, n_boot=40, seed=3)
    for name in ("mean", "max"):
        alone = metrics.bootstrap_interval(study_ids, lambda rows, copies, key=name: both(rows, copies)[key],
                                           n_boot=40, seed=3)
        assert together[name] == alone


def test_format_table_aligns_columns():
    text = format_table([["metric", "sag_t1"], ["accuracy", "0.9"], ["  majority class", "0.75"]])
    lines = text.splitlines()
    columns = [line.index(value) for line, value in zip(lines, ["sag_t1", "0.9", "0.75"], strict=True)]
    assert columns == [len("  majority class") + 2] * 3
