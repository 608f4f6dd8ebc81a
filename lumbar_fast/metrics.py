"""The RSNA 2024 competition metric, its input checks, per-model classification summaries, a study bootstrap.

The metric follows docs/metric.md and the competition's public metric notebook (`rsna-lumbar-metric`):
- each group (spinal, foraminal, subarticular; left/right and levels pooled) scores a sample-weighted log
  loss, weights 1/2/4 for normal_mild/moderate/severe, probabilities clipped to [eps, 1 - eps] and rows
  renormalised (as sklearn's `log_loss` did in 2024; scikit-learn >= 1.5 does neither: docs/metric.md);
- any_severe_spinal: one row per study, y = any spinal level severe, p = max over the levels of p(severe) as
  submitted, weight = the study's largest spinal sample weight; binary weighted log loss;
- score = the mean of the four losses.
Rows with a missing label (-1) are dropped before anything else, as the competition drops unlabelled rows from
both solution and submission. So a study with some spinal levels unlabelled enters any_severe_spinal with
only its labelled levels (label, weight and predicted max alike), and a study with no labelled spinal level
does not enter it at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from lumbar_fast import rsna
from lumbar_fast.errors import LumbarFastError

#: probabilities are clipped to [EPS, 1 - EPS] before the log (sklearn's historical default)
EPS = 1e-15
#: a submission row's probabilities must sum to 1 within this absolute tolerance
SUM_TOLERANCE = 1e-3
#: metric groups, in report order
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(rsna.CONDITION_GROUP.values()))
ANY_SEVERE = "any_severe_spinal"
SEVERE = rsna.SEVERITY_FROM_NAME["Severe"]
SPINAL = rsna.CONDITION_GROUP["spinal_canal_stenosis"]
SUBMISSION_HEADER: tuple[str, ...] = ("row_id", *rsna.SUBMISSION_COLUMNS)
#: `{condition}_{level}` -> (condition, level)
_LOCATIONS: dict[str, tuple[str, str]] = {f"{c}_{lv}": (c, lv) for c in rsna.CONDITIONS for lv in rsna.LEVELS}


def clip_normalise(p: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Probabilities clipped to [eps, 1 - eps] and each row rescaled to sum to 1, so no log sees a zero."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return p / p.sum(axis=1, keepdims=True)


def _weighted_nll(p_true: np.ndarray, weights: np.ndarray) -> float:
    """Σ w·(−log p_true) / Σ w; NaN when there is nothing to average."""
    if len(p_true) == 0:
        return float("nan")
    return float(np.sum(weights * -np.log(p_true)) / np.sum(weights))


def weighted_log_loss(
    y: Sequence[int] | np.ndarray,
    p: np.ndarray,
    class_weights: Sequence[float] = rsna.CLASS_WEIGHTS,
    eps: float = EPS,
) -> float:
    """Sample-weighted log loss of class ids `y` under probabilities `p` (N, classes); y = -1 rows dropped.

    Each row is weighted by `class_weights[y]` (the competition's 1/2/4); NaN when no row is labelled.
    """
    y = np.asarray(y, dtype=np.int64)
    keep = y != rsna.MISSING
    y = y[keep]
    p_true = clip_normalise(np.asarray(p, dtype=np.float64)[keep], eps)[np.arange(len(y)), y]
    return _weighted_nll(p_true, np.asarray(class_weights, dtype=np.float64)[y])


def any_severe_spinal_loss(
    study_ids: np.ndarray,
    y: np.ndarray,
    p_severe: np.ndarray,
    class_weights: Sequence[float] = rsna.CLASS_WEIGHTS,
    eps: float = EPS,
) -> float:
    """The any_severe_spinal term over spinal rows: per study, y = any level severe, p = max p(severe).

    Unlabelled rows (y = -1) are dropped first; each study weighs its largest labelled sample weight.
    """
    rows = pd.DataFrame({"study": np.asarray(study_ids), "y": np.asarray(y, dtype=np.int64),
                         "p": np.asarray(p_severe, dtype=np.float64)})
    rows = rows[rows["y"] != rsna.MISSING]
    rows["weight"] = np.asarray(class_weights, dtype=np.float64)[rows["y"].to_numpy()]
    per_study = rows.groupby("study").agg(y=("y", "max"), p=("p", "max"), weight=("weight", "max"))
    p = np.clip(per_study["p"].to_numpy(), eps, 1.0 - eps)
    p_true = np.where(per_study["y"].to_numpy() == SEVERE, p, 1.0 - p)
    return _weighted_nll(p_true, per_study["weight"].to_numpy())


def competition_losses(
    study_ids: np.ndarray,
    conditions: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    eps: float = EPS,
) -> dict[str, float]:
    """The four competition losses and their mean (`score`) over aligned rows; the metric's core.

    study_ids/conditions/y: one entry per (study, condition, level) row, y = -1 when unlabelled; p: (N, 3)
    probabilities in rsna.SUBMISSION_COLUMNS order. A group without labelled rows gives NaN.
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    groups = pd.Series(np.asarray(conditions)).map(rsna.CONDITION_GROUP).to_numpy()
    losses = {group: weighted_log_loss(y[groups == group], p[groups == group], eps=eps) for group in GROUPS}
    spinal = groups == SPINAL
    losses[ANY_SEVERE] = any_severe_spinal_loss(np.asarray(study_ids)[spinal], y[spinal], p[spinal, SEVERE],
                                                eps=eps)
    losses["score"] = float(np.mean(list(losses.values())))
    return losses


def _severity_codes(column: pd.Series) -> pd.Series:
    """Class ids of one train.csv label column: severity names or integer ids; empty means missing (-1)."""
    if pd.api.types.is_numeric_dtype(column):
        codes = column.fillna(rsna.MISSING)
        valid = codes.isin([rsna.MISSING, *range(len(rsna.SEVERITIES))])
    else:
        codes = column.map(rsna.SEVERITY_FROM_NAME)
        valid = codes.notna() | column.isna() | (column.astype(str).str.strip() == "")
        codes = codes.fillna(rsna.MISSING)
    if not valid.all():
        raise LumbarFastError(
            f"label column {column.name} has unknown value {column[~valid].iloc[0]!r}; expected one of "
            f"{', '.join(rsna.SEVERITIES)} or empty"
        )
    return codes.astype(np.int64)


def labels_to_rows(train_df: pd.DataFrame) -> pd.DataFrame:
    """train.csv-format labels (or cache.study_labels()) as one row per (study, condition, level).

    Columns: row_id, study_id, condition, level, severity (class id, -1 missing); study-major, then the
    competition's condition and level order, as sample_submission.csv.
    """
    missing = [c for c in ("study_id", *rsna.LABEL_COLUMNS) if c not in train_df.columns]
    if missing:
        more = " ..." if len(missing) > 3 else ""
        raise LumbarFastError(f"labels lack column(s) {', '.join(missing[:3])}{more}")
    study_ids = pd.to_numeric(train_df["study_id"], errors="coerce")
    if study_ids.isna().any() or (study_ids != study_ids.round()).any():
        raise LumbarFastError("labels: study_id must be integers")
    twice = study_ids[study_ids.duplicated()]
    if len(twice):
        raise LumbarFastError(f"labels: study_id {int(twice.iloc[0])} appears twice")
    codes = pd.DataFrame({column: _severity_codes(train_df[column]) for column in rsna.LABEL_COLUMNS})
    codes.insert(0, "study_id", study_ids.astype(np.int64).to_numpy())
    rows = codes.melt(id_vars="study_id", var_name="location", value_name="severity")
    rows["order"] = rows["location"].map({name: i for i, name in enumerate(rsna.LABEL_COLUMNS)})
    rows = rows.sort_values(["study_id", "order"], kind="stable").reset_index(drop=True)
    rows["condition"] = rows["location"].map(lambda loc: _LOCATIONS[loc][0])
    rows["level"] = rows["location"].map(lambda loc: _LOCATIONS[loc][1])
    rows["row_id"] = rows["study_id"].astype(str) + "_" + rows["location"]
    return rows[["row_id", "study_id", "condition", "level", "severity"]]


def parse_row_ids(row_ids: pd.Series) -> pd.DataFrame:
    """(study_id, condition, level) of each `{study_id}_{condition}_{level}` row id; bad ids are an error."""
    parts = row_ids.astype(str).str.split("_", n=1, expand=True).reindex(columns=[0, 1])
    location = parts[1].map(_LOCATIONS)
    bad = ~parts[0].str.fullmatch(r"\d+").fillna(False).astype(bool) | location.isna()
    if bad.any():
        raise LumbarFastError(f"malformed row_ids: {_first(row_ids[bad])}")
    return pd.DataFrame({
        "study_id": parts[0].astype(np.int64).to_numpy(),
        "condition": [loc[0] for loc in location],
        "level": [loc[1] for loc in location],
    }, index=row_ids.index)


def submission_frame(row_ids: Sequence[str] | pd.Series, p: np.ndarray) -> pd.DataFrame:
    """A sample_submission-format frame (row_id, normal_mild, moderate, severe) from (N, 3) probabilities."""
    columns = dict(zip(rsna.SUBMISSION_COLUMNS, np.asarray(p, dtype=np.float64).T, strict=True))
    return pd.DataFrame({"row_id": [str(row_id) for row_id in row_ids], **columns})


def _first(values: pd.Series) -> str:
    """'N row_id(s), first X' for error messages."""
    return f"{len(values)} row_id(s), first {values.iloc[0]!r}"


def check_submission(submission: pd.DataFrame) -> None:
    """Checks of a sample_submission-format frame: columns, numbers, no NaN/negatives, sums, unique ids."""
    if sorted(map(str, submission.columns)) != sorted(SUBMISSION_HEADER):
        raise LumbarFastError(
            f"submission columns are {', '.join(map(str, submission.columns))}; "
            f"expected {', '.join(SUBMISSION_HEADER)}"
        )
    if submission.empty:
        raise LumbarFastError("submission has no rows")
    for column in rsna.SUBMISSION_COLUMNS:
        if not pd.api.types.is_numeric_dtype(submission[column]):
            raise LumbarFastError(f"submission column {column} holds non-numeric values")
    probs = submission[list(rsna.SUBMISSION_COLUMNS)].to_numpy(dtype=np.float64)
    ids = submission["row_id"]
    checks = (
        (~np.isfinite(probs).all(axis=1), "NaN or infinite probabilities"),
        ((probs < 0).any(axis=1), "negative probabilities"),
        (np.abs(probs.sum(axis=1) - 1.0) > SUM_TOLERANCE, f"rows not summing to 1 (±{SUM_TOLERANCE:g})"),
        (ids.duplicated(keep="first").to_numpy(), "duplicate row_ids"),
    )
    for bad, what in checks:
        if bad.any():
            raise LumbarFastError(f"submission has {what}: {_first(ids[bad])}")


def align_submission(solution: pd.DataFrame, submission: pd.DataFrame) -> pd.DataFrame:
    """Solution rows of the submission's studies, with the submitted probabilities joined on row_id.

    Every submission row_id must be in the solution (else 'unknown'), and every solution row of a study the
    submission covers must be submitted (else 'missing'). Studies absent from the submission are not scored.
    """
    check_submission(submission)
    duplicated = solution["row_id"].duplicated()
    if duplicated.any():
        raise LumbarFastError(f"labels have duplicate row_ids: {_first(solution['row_id'][duplicated])}")
    unknown = ~submission["row_id"].isin(solution["row_id"])
    if unknown.any():
        raise LumbarFastError(f"row_ids not in the labels: {_first(submission['row_id'][unknown])}")
    rows = solution[["row_id", "severity"]].join(parse_row_ids(solution["row_id"]))
    studies = rows.loc[rows["row_id"].isin(submission["row_id"]), "study_id"].unique()
    rows = rows[rows["study_id"].isin(studies)]
    missing = ~rows["row_id"].isin(submission["row_id"])
    if missing.any():
        raise LumbarFastError(f"submission lacks row_ids of its studies: {_first(rows['row_id'][missing])}")
    return rows.merge(submission, on="row_id", how="left", validate="one_to_one")


def rsna_score(solution: pd.DataFrame, submission: pd.DataFrame, eps: float = EPS) -> dict:
    """The competition score of a submission (row_id + 3 probabilities) vs solution rows (row_id, severity).

    `solution` may be `labels_to_rows(train_df)`. Returns the three group losses, any_severe_spinal, `score`
    (their mean), and counts: n_studies scored and n_rows labelled rows per term. Bad input: LumbarFastError.
    """
    rows = align_submission(solution, submission)
    y = rows["severity"].to_numpy(dtype=np.int64)
    losses = competition_losses(rows["study_id"].to_numpy(), rows["condition"].to_numpy(), y,
                                rows[list(rsna.SUBMISSION_COLUMNS)].to_numpy(dtype=np.float64), eps=eps)
    undefined = [name for name, value in losses.items() if name != "score" and np.isnan(value)]
    if undefined:
        raise LumbarFastError(f"no labelled rows for {', '.join(undefined)} among the submission's studies")
    labelled = rows[y != rsna.MISSING]
    groups = labelled["condition"].map(rsna.CONDITION_GROUP)
    n_rows = {group: int((groups == group).sum()) for group in GROUPS}
    n_rows[ANY_SEVERE] = int(labelled.loc[groups == SPINAL, "study_id"].nunique())
    return {**losses, "n_studies": int(rows["study_id"].nunique()), "n_rows": n_rows}


def _ratios(numerators: np.ndarray, denominators: np.ndarray) -> list[float | None]:
    """Element-wise numerator / denominator, None where the denominator is 0."""
    return [float(n / d) if d else None for n, d in zip(numerators, denominators, strict=True)]


def class_prior(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """The training prior the baselines predict: each severity's share among the labelled `labels`, with one
    pseudo-count per class (Laplace), so that a class absent from a small training fold is not predicted at
    probability 0, whose clipped log loss (~35 per item) would make the baseline look far worse than it is."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels[labels != rsna.MISSING], minlength=len(rsna.SEVERITIES)) + 1.0
    return counts / counts.sum()


def metric_optimal(p: np.ndarray) -> np.ndarray:
    """The prediction with the lowest expected weighted log loss when the grades occur with probabilities `p`
    (rows, or one row): q ∝ (1, 2, 4)·p, renormalised, since the metric weighs a row by its true grade. Of the
    prior, the best constant prediction: a model must beat it, not only the prior, to have learned."""
    q = np.asarray(p, dtype=np.float64) * np.asarray(rsna.CLASS_WEIGHTS, dtype=np.float64)
    return q / q.sum(axis=-1, keepdims=True)


def classification_summary(y: Sequence[int] | np.ndarray, p: np.ndarray, prior: Sequence[float]) -> dict:
    """One model's validation figures beside its baselines: accuracy vs the majority class of `prior`
    (the training prior, `class_prior`), balanced accuracy, per-class precision/recall, confusion matrix
    (rows true, columns predicted), weighted log loss vs the prior's and the best constant prediction's
    (`metric_optimal` of the prior). Unlabelled items (y = -1) are dropped.

    Undefined ratios (a class never predicted / absent) are None, so the dict stays JSON-serialisable.
    """
    y = np.asarray(y, dtype=np.int64)
    keep = y != rsna.MISSING
    y, p = y[keep], np.asarray(p, dtype=np.float64)[keep]
    if len(y) == 0:
        raise LumbarFastError("no labelled items to summarise")
    prior = np.asarray(prior, dtype=np.float64)
    n_classes = p.shape[1]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y, p.argmax(axis=1)), 1)
    hits = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    recall = _ratios(hits, support)
    majority = int(prior.argmax())
    return {
        "n": int(len(y)),
        "accuracy": float(hits.sum() / len(y)),
        "majority_class": majority,
        "majority_accuracy": float(np.mean(y == majority)),
        "balanced_accuracy": float(np.mean([r for r in recall if r is not None])),
        "precision": _ratios(hits, predicted),
        "recall": recall,
        "support": support.tolist(),
        "confusion": confusion.tolist(),
        "weighted_log_loss": weighted_log_loss(y, p),
        "prior": prior.tolist(),
        "prior_weighted_log_loss": weighted_log_loss(y, np.tile(prior, (len(y), 1))),
        "constant_weighted_log_loss": weighted_log_loss(y, np.tile(metric_optimal(prior), (len(y), 1))),
    }


def bootstrap_interval(
    study_ids: Sequence[int] | np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of `statistic` over studies resampled with replacement (rows go with their study).

    `study_ids[i]` is row i's study. Each replicate calls `statistic(rows, copies)`: `rows` indexes the drawn
    rows, `copies[j]` numbers the drawn study copy of rows[j] — use it as the study key of per-study terms
    (any_severe_spinal), since one study can be drawn twice. NaN replicates are ignored.
    """
    return bootstrap_intervals(study_ids, lambda rows, copies: {"value": statistic(rows, copies)},
                               n_boot, seed, confidence)["value"]


def bootstrap_intervals(
    study_ids: Sequence[int] | np.ndarray,
    statistics: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """`bootstrap_interval` of several figures at once: `statistics(rows, copies)` returns them by name from
    one replicate, so figures that share their work (a classification summary) compute it once."""
    if n_boot < 1:
        raise LumbarFastError(f"the bootstrap needs at least 1 replicate, not {n_boot}")
    _, row_study = np.unique(np.asarray(study_ids), return_inverse=True)
    by_study = np.argsort(row_study, kind="stable")
    sizes = np.bincount(row_study)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(sizes), len(sizes))
        rows = np.concatenate([by_study[starts[s]:starts[s] + sizes[s]] for s in drawn])
        copies = np.repeat(np.arange(len(drawn)), sizes[drawn])
        replicates.append(statistics(rows, copies))
    tail = 50.0 * (1.0 - confidence)
    intervals = {}
    for name in replicates[0]:
        values = np.array([replicate[name] for replicate in replicates], dtype=np.float64)
        if np.isnan(values).all():
            intervals[name] = (float("nan"), float("nan"))
            continue
        low, high = np.nanpercentile(values, [tail, 100.0 - tail])
        intervals[name] = (float(low), float(high))
    return intervals
