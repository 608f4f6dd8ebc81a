"""The RSNA metric: hand-computed cases, missing labels, any_severe_spinal, a loop-based re-implementation,
and scikit-learn's log_loss computed the way the competition's metric does (docs/metric.md)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import log_loss

from lumbar_fast import metrics, rsna
from lumbar_fast.errors import LumbarFastError

W = dict(enumerate(rsna.CLASS_WEIGHTS))


def random_labels(rng: np.random.Generator, n_studies: int, missing: float = 0.2) -> pd.DataFrame:
    """A train.csv-format frame: severity names, about `missing` of the cells empty."""
    frame = pd.DataFrame({"study_id": rng.choice(10**9, n_studies, replace=False)})
    for column in rsna.LABEL_COLUMNS:
        names = rng.choice(rsna.SEVERITIES, n_studies, p=[0.6, 0.25, 0.15])
        frame[column] = np.where(rng.random(n_studies) < missing, None, names)
    return frame


def reference_score(train: pd.DataFrame, submission: pd.DataFrame, eps: float = metrics.EPS) -> dict:
    """docs/metric.md written as plain loops over train.csv cells, independent of metrics.py."""
    probs = {r.row_id: (r.normal_mild, r.moderate, r.severe) for r in submission.itertuples()}
    sums = {group: [0.0, 0.0] for group in ("spinal", "foraminal", "subarticular", "any")}
    for _, study in train.iterrows():
        worst, worst_p, seen = -1, 0.0, False
        for column in rsna.LABEL_COLUMNS:
            value = study[column]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            y = rsna.SEVERITIES.index(value)
            raw = probs[f"{study['study_id']}_{column}"]
            clipped = [min(max(q, eps), 1 - eps) for q in raw]
            p_true = clipped[y] / sum(clipped)
            group = next(g for g in ("spinal", "foraminal", "subarticular") if g in column)
            sums[group][0] += W[y] * -math.log(p_true)
            sums[group][1] += W[y]
            if group == "spinal":
                seen = True
                worst = max(worst, y)
                worst_p = max(worst_p, raw[2])
        if seen:
            p_any = min(max(worst_p, eps), 1 - eps)
            sums["any"][0] += W[worst] * -math.log(p_any if worst == 2 else 1 - p_any)
            sums["any"][1] += W[worst]
    losses = {group: total / weight for group, (total, weight) in sums.items()}
    losses["any_severe_spinal"] = losses.pop("any")
    return {**losses, "score": sum(losses.values()) / 4}


def test_weighted_log_loss_by_hand():
    p = np.array([[0.8, 0.1, 0.1], [0.5, 0.25, 0.25], [0.2, 0.6, 0.2]])
    expected = (1 * -math.log(0.8) + 4 * -math.log(0.25) + 2 * -math.log(0.6)) / (1 + 4 + 2)
    assert metrics.weighted_log_loss([0, 2, 1], p) == pytest.approx(expected, rel=1e-12)


def test_weighted_log_loss_drops_missing_renormalises_and_clips():
    p = np.array([[0.8, 0.1, 0.1], [0.0, 0.0, 1.0]])
    assert metrics.weighted_log_loss([0, -1], p) == pytest.approx(-math.log(0.8), rel=1e-12)
    assert metrics.weighted_log_loss([0], [[0.4, 0.05, 0.05]]) == pytest.approx(-math.log(0.8), rel=1e-12)
    clipped = metrics.weighted_log_loss([0], [[0.0, 0.0, 1.0]])
    assert clipped == pytest.approx(-math.log(metrics.EPS), rel=1e-6)
    assert math.isnan(metrics.weighted_log_loss([-1, -1], p))


def test_any_severe_spinal_by_hand():
    """Per study: y = any severe, p = max p(severe) over labelled levels, weight = largest labelled weight."""
    studies = np.repeat([1, 2, 3], 5)
    y = np.array([0, 1, 2, 0, 0,          # study 1: severe -> y 1, weight 4
                  0, 0, 1, -1, 0,         # study 2: worst moderate -> y 0, weight 2; the -1 level's p ignored
                  -1, -1, -1, -1, -1])    # study 3: unlabelled -> left out
    p_severe = np.array([0.1, 0.2, 0.6, 0.1, 0.3,
                         0.1, 0.3, 0.2, 0.9, 0.1,
                         0.9, 0.9, 0.9, 0.9, 0.9])
    expected = (4 * -math.log(0.6) + 2 * -math.log(1 - 0.3)) / (4 + 2)
    assert metrics.any_severe_spinal_loss(studies, y, p_severe) == pytest.approx(expected, rel=1e-12)


def test_rsna_score_by_hand_with_constant_predictions():
    """With p = (0.5, 0.3, 0.2) everywhere each group loss is Σ n_c w_c (−log p_c) / Σ n_c w_c."""
    train = pd.DataFrame({"study_id": [7, 8]})
    for i, column in enumerate(rsna.LABEL_COLUMNS):
        train[column] = [rsna.SEVERITIES[i % 3], None if i % 4 == 0 else rsna.SEVERITIES[0]]
    train.loc[0, "spinal_canal_stenosis_l1_l2"] = None
    rows = metrics.labels_to_rows(train)
    p = np.tile([0.5, 0.3, 0.2], (len(rows), 1))
    result = metrics.rsna_score(rows, metrics.submission_frame(rows["row_id"], p))
    for group in metrics.GROUPS:
        in_group = rows[(rows["condition"].map(rsna.CONDITION_GROUP) == group) & (rows["severity"] >= 0)]
        counts = np.bincount(in_group["severity"], minlength=3)
        weights = counts * np.array(rsna.CLASS_WEIGHTS)
        assert result[group] == pytest.approx((weights * -np.log([0.5, 0.3, 0.2])).sum() / weights.sum())
        assert result["n_rows"][group] == len(in_group)
    # study 7's labelled spinal levels are Moderate, Severe, Normal, Moderate -> severe, weight 4;
    # study 8's are l2..l4 Normal/Mild (l1 and l5 empty) -> not severe, weight 1
    assert result["any_severe_spinal"] == pytest.approx((4 * -math.log(0.2) + 1 * -math.log(0.8)) / 5)
    losses = [result[k] for k in (*metrics.GROUPS, metrics.ANY_SEVERE)]
    assert result["score"] == pytest.approx(np.mean(losses))
    assert result["n_studies"] == 2 and result["n_rows"][metrics.ANY_SEVERE] == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rsna_score_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    train = random_labels(rng, n_studies=30)
    rows = metrics.labels_to_rows(train)
    p = rng.dirichlet([0.5, 0.5, 0.5], len(rows))
    p[rng.random(len(rows)) < 0.05] = [1.0, 0.0, 0.0]     # exact zeros exercise the clipping
    submission = metrics.submission_frame(rows["row_id"], p)
    submission = submission.sample(frac=1.0, random_state=seed)  # row order must not matter
    result = metrics.rsna_score(rows, submission)
    expected = reference_score(train, submission)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-10), key


def sklearn_score(rows: pd.DataFrame, p: np.ndarray) -> dict:
    """The competition's metric notebook: scikit-learn's log_loss with sample weights per condition group,
    and any_severe_spinal from each study's maximum severe probability and maximum weight."""
    frame = rows.assign(group=rows["condition"].map(rsna.CONDITION_GROUP), p_severe=p[:, 2])
    keep = (frame["severity"] != rsna.MISSING).to_numpy()
    frame, p = frame[keep], p[keep]
    frame["weight"] = np.asarray(rsna.CLASS_WEIGHTS)[frame["severity"]]
    losses = {}
    for group in metrics.GROUPS:
        mine = (frame["group"] == group).to_numpy()
        losses[group] = log_loss(frame["severity"][mine], p[mine], sample_weight=frame["weight"][mine],
                                 labels=[0, 1, 2])
    spinal = frame[frame["group"] == "spinal"].groupby("study_id").agg(
        y=("severity", "max"), p=("p_severe", "max"), weight=("weight", "max"))
    losses["any_severe_spinal"] = log_loss(spinal["y"] == 2, spinal["p"], sample_weight=spinal["weight"],
                                           labels=[False, True])
    return {**losses, "score": float(np.mean(list(losses.values())))}


@pytest.mark.parametrize("seed", [0, 1])
def test_rsna_score_matches_sklearn_log_loss_on_valid_inputs(seed):
    """Probabilities strictly inside (0, 1), rows summing to one: where the 2024 metric and today's
    scikit-learn agree, the scores agree to rounding."""
    rng = np.random.default_rng(seed)
    rows = metrics.labels_to_rows(random_labels(rng, n_studies=40))
    p = rng.dirichlet([2.0, 2.0, 2.0], len(rows))
    result = metrics.rsna_score(rows, metrics.submission_frame(rows["row_id"], p))
    for key, value in sklearn_score(rows, p).items():
        assert result[key] == pytest.approx(value, rel=1e-9), key


def test_edge_cases_follow_the_2024_metric_not_todays_sklearn():
    """scikit-learn >= 1.5 clips at machine epsilon and no longer renormalises rows; the competition's
    metric (sklearn of 2024) clipped at 1e-15 and renormalised. metrics.py keeps the competition's."""
    zero = np.array([[0.0, 0.0, 1.0]])  # the true class predicted with probability 0
    assert metrics.weighted_log_loss([0], zero) == pytest.approx(-math.log(1e-15), rel=1e-6)
    assert log_loss([0], zero, labels=[0, 1, 2]) == pytest.approx(-math.log(np.finfo(float).eps), rel=1e-6)
    unnormalised = np.array([[0.4, 0.05, 0.05]])  # sums to 0.5: renormalised to 0.8 for the true class
    assert metrics.weighted_log_loss([0], unnormalised) == pytest.approx(-math.log(0.8), rel=1e-12)
    with pytest.warns(UserWarning, match="do not sum to one"):
        assert log_loss([0], unnormalised, labels=[0, 1, 2]) == pytest.approx(-math.log(0.4), rel=1e-12)


def test_rsna_score_scores_only_the_submissions_studies():
    rng = np.random.default_rng(3)
    train = random_labels(rng, n_studies=12, missing=0.0)
    rows = metrics.labels_to_rows(train)
    part = rows[rows["study_id"].isin(train["study_id"][:5])]
    p = rng.dirichlet([1, 1, 1], len(part))
    submission = metrics.submission_frame(part["row_id"], p)
    result = metrics.rsna_score(rows, submission)
    assert result["n_studies"] == 5
    assert result["score"] == pytest.approx(reference_score(train[:5], submission)["score"])


def test_a_group_without_rows_is_nan():
    """Per-sequence evaluation may hold one group only: the others are NaN, and so is the mean."""
    conditions = np.array(["spinal_canal_stenosis"] * 5)
    losses = metrics.competition_losses(np.zeros(5), conditions, np.zeros(5), np.full((5, 3), 1 / 3))
    assert losses["spinal"] == pytest.approx(math.log(3)) and losses["any_severe_spinal"] > 0
    assert math.isnan(losses["foraminal"]) and math.isnan(losses["score"])
    assert math.isnan(metrics.weighted_log_loss([], np.zeros((0, 3))))


def test_labels_to_rows_accepts_names_and_class_ids():
    rng = np.random.default_rng(4)
    train = random_labels(rng, n_studies=4)
    rows = metrics.labels_to_rows(train)
    assert len(rows) == 4 * 25
    assert rows["row_id"].iloc[0] == f"{rows['study_id'].min()}_{rsna.LABEL_COLUMNS[0]}"
    codes = train.copy()
    codes[list(rsna.LABEL_COLUMNS)] = rows["severity"].to_numpy().reshape(-1, 25)[
        np.argsort(np.argsort(train["study_id"].to_numpy()))].astype(np.int8)
    pd.testing.assert_frame_equal(metrics.labels_to_rows(codes), rows)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns=["right_subarticular_stenosis_l5_s1"]), "lack column"),
    (lambda t: t.assign(spinal_canal_stenosis_l1_l2="Mild"), "unknown value 'Mild'"),
    (lambda t: t.assign(study_id=1), "appears twice"),
])
def test_labels_to_rows_errors(change, message):
    train = random_labels(np.random.default_rng(5), n_studies=3)
    with pytest.raises(LumbarFastError, match=message):
        metrics.labels_to_rows(change(train))


def test_malformed_solution_row_id_is_an_error():
    solution = pd.DataFrame({"row_id": ["12_spinal_canal_stenosis_l9_l9"], "severity": [0]})
    submission = pd.DataFrame({"row_id": ["12_spinal_canal_stenosis_l9_l9"], "normal_mild": [1.0],
                               "moderate": [0.0], "severe": [0.0]})
    with pytest.raises(LumbarFastError, match="malformed row_ids"):
        metrics.rsna_score(solution, submission)


def test_undefined_group_is_an_error():
    train = random_labels(np.random.default_rng(6), n_studies=2, missing=0.0)
    train[[c for c in rsna.LABEL_COLUMNS if "foraminal" in c]] = None
    rows = metrics.labels_to_rows(train)
    with pytest.raises(LumbarFastError, match="no labelled rows for foraminal"):
        metrics.rsna_score(rows, metrics.submission_frame(rows["row_id"], np.full((len(rows), 3), 1 / 3)))


def test_class_prior_counts_each_class_once_more_so_an_absent_class_keeps_a_finite_loss():
    """A class missing from a small training fold: the raw frequencies predict it at 0 and the baseline's
    clipped log loss explodes (~35 per item); one pseudo-count per class keeps it an honest baseline."""
    assert metrics.class_prior([0, 0, 0, 1, 2, 2, -1]).tolist() == pytest.approx([4 / 9, 2 / 9, 3 / 9])
    prior = metrics.class_prior([0] * 8 + [1] * 2)  # no Severe in training
    assert prior.tolist() == pytest.approx([9 / 13, 3 / 13, 1 / 13])
    y = [0, 0, 1, 2]
    assert metrics.classification_summary(y, np.tile(prior, (4, 1)), prior)["prior_weighted_log_loss"] < 2.5
    raw = [0.8, 0.2, 0.0]
    assert metrics.classification_summary(y, np.tile(raw, (4, 1)), raw)["prior_weighted_log_loss"] > 15


def test_the_best_constant_is_the_prior_reweighted_and_no_other_constant_beats_it_in_expectation():
    """q ∝ (1, 2, 4)·p: under the weighted log loss, predicting the class shares themselves is not the best a
    constant can do, so a model that learned nothing beats the prior; it must beat this one."""
    prior = np.array([0.7, 0.2, 0.1])
    best = metrics.metric_optimal(prior)
    assert best.tolist() == pytest.approx([0.7 / 1.5, 0.4 / 1.5, 0.4 / 1.5])
    weights = np.asarray(rsna.CLASS_WEIGHTS) * prior

    def expected(q: np.ndarray) -> float:
        return float(-(weights * np.log(q)).sum() / weights.sum())

    rng = np.random.default_rng(3)
    for other in [prior, np.full(3, 1 / 3), *rng.dirichlet(np.ones(3), size=200)]:
        assert expected(best) <= expected(other) + 1e-12
    assert np.allclose(metrics.metric_optimal(np.stack([prior, best])).sum(axis=1), 1.0)
    y = [0] * 7 + [1] * 2 + [2]  # the prior's shares exactly
    summary = metrics.classification_summary(y, np.tile(prior, (10, 1)), prior)
    assert summary["constant_weighted_log_loss"] == pytest.approx(expected(best))
    assert summary["constant_weighted_log_loss"] < summary["prior_weighted_log_loss"]


def test_classification_summary_by_hand():
    y = [0, 0, 0, 1, 2, -1]
    p = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3],
                  [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.0, 0.0, 1.0]])
    prior = [0.6, 0.3, 0.1]
    summary = metrics.classification_summary(y, p, prior)
    assert summary["n"] == 5
    assert summary["confusion"] == [[2, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert summary["accuracy"] == pytest.approx(3 / 5)
    assert summary["majority_class"] == 0 and summary["majority_accuracy"] == pytest.approx(3 / 5)
    assert summary["recall"] == pytest.approx([2 / 3, 1.0, 0.0])
    assert summary["balanced_accuracy"] == pytest.approx(5 / 9)
    assert summary["precision"][:2] == pytest.approx([2 / 3, 1 / 2]) and summary["precision"][2] is None
    assert summary["support"] == [3, 1, 1]
    assert summary["weighted_log_loss"] == pytest.approx(metrics.weighted_log_loss(y, p))
    prior_loss = (3 * -math.log(0.6) + 2 * -math.log(0.3) + 4 * -math.log(0.1)) / 9
    assert summary["prior_weighted_log_loss"] == pytest.approx(prior_loss)
    json.dumps(summary)


def test_bootstrap_moves_whole_studies_and_is_seeded():
    rng = np.random.default_rng(7)
    study_ids = np.repeat(rng.choice(10**6, 40, replace=False), rng.integers(1, 6, 40))
    values = rng.normal(size=len(study_ids))
    seen = []

    def mean_checking_studies(rows: np.ndarray, copies: np.ndarray) -> float:
        for copy in np.unique(copies):
            drawn = study_ids[rows[copies == copy]]
            assert len(set(drawn)) == 1 and len(drawn) == np.sum(study_ids == drawn[0])
        seen.append(len(np.unique(copies)))
        return float(values[rows].mean())

    low, high = metrics.bootstrap_interval(study_ids, mean_checking_studies, n_boot=50, seed=1)
    assert set(seen) == {40}
    assert low < values.mean() < high
    def mean(rows: np.ndarray, copies: np.ndarray) -> float:
        return float(values[rows].mean())

    assert metrics.bootstrap_interval(study_ids, mean, n_boot=50, seed=1) == (low, high)
    assert metrics.bootstrap_interval(study_ids, mean, n_boot=50, seed=2) != (low, high)


def test_bootstrap_of_the_competition_score_keeps_drawn_copies_apart():
    """A study drawn twice counts twice in any_severe_spinal when `copies` is used as the study key."""
    rng = np.random.default_rng(8)
    rows = metrics.labels_to_rows(random_labels(rng, n_studies=20))
    p = rng.dirichlet([1, 1, 1], len(rows))
    cond, y, study = rows["condition"].to_numpy(), rows["severity"].to_numpy(), rows["study_id"].to_numpy()
    full = metrics.competition_losses(study, cond, y, p)["score"]
    low, high = metrics.bootstrap_interval(
        study, lambda r, c: metrics.competition_losses(c, cond[r], y[r], p[r])["score"], n_boot=100, seed=0)
    assert low < full < high
