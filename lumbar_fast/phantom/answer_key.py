"""The real-difficulty phantom's answer key and the best possible score it implies.

`phantom_answer_key.csv` sits beside train.csv and test_labels.csv: one row per (study, condition, level) of
both splits, labelled or not, with the drawn latent, the narrowing the pixels show and p(grade | latent).
The metric weighs a row by its true grade (1/2/4), so the prediction with the lowest expected loss is
q ∝ (1, 2, 4)·p, renormalised; the metric takes any_severe_spinal as the maximum of the levels' q(severe).
Its score on the drawn labels is the realised best possible; resampling the labels from p for the same
latents gives its expectation over rater noise. Nothing in training reads this file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar_fast import metrics, rsna
from lumbar_fast.csvfile import FLOAT, INT, TEXT, read_csv
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.phantom.grading import StudyTruth, draw_grades

ANSWER_KEY_NAME = "phantom_answer_key.csv"
PROBABILITY_COLUMNS = rsna.PROBABILITY_COLUMNS
ANSWER_KEY_CSV: dict[str, str] = {"row_id": TEXT, "split": TEXT, "study_id": INT, "condition": TEXT,
                                  "level": TEXT, "latent": FLOAT, "narrowing": FLOAT,
                                  **dict.fromkeys(PROBABILITY_COLUMNS, FLOAT)}
TERMS: tuple[str, ...] = (*metrics.GROUPS, metrics.ANY_SEVERE)


def answer_key_rows(split: str, study_id: int, truth: StudyTruth) -> Iterable[list]:
    """The answer key's rows of one study, in submission row order."""
    for condition in rsna.CONDITIONS:
        for level in rsna.LEVELS:
            key = (condition, level)
            yield [rsna.row_id(study_id, condition, level), split, study_id, condition, level,
                   f"{truth.latent[key]:.10g}", f"{truth.narrowing[key]:.10g}",
                   *(f"{p:.10g}" for p in truth.probabilities[key])]


def find_answer_key(labels_path: Path) -> Path | None:
    """The answer key beside a labels file, or None (not a real-difficulty phantom)."""
    path = Path(labels_path).parent / ANSWER_KEY_NAME
    return path if path.is_file() else None


def judged_rows(solution: pd.DataFrame, answer_key: pd.DataFrame) -> pd.DataFrame:
    """Solution rows (labels_to_rows) joined with their p(grade); every row needs an answer-key row."""
    rows = solution.merge(answer_key[["row_id", *PROBABILITY_COLUMNS]], on="row_id", how="left",
                          validate="one_to_one")
    lacking = rows[PROBABILITY_COLUMNS[0]].isna()
    if lacking.any():
        raise LumbarFastError(f"the answer key lacks {int(lacking.sum())} labelled rows, first "
                              f"{rows.loc[lacking, 'row_id'].iloc[0]!r}")
    return rows


def expected_losses(study_ids: np.ndarray, conditions: np.ndarray, labelled: np.ndarray, p: np.ndarray,
                    q: np.ndarray, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """The competition losses of prediction `q`, averaged over labels redrawn from p(grade) `draws` times
    (labelled rows only: a missing label stays missing)."""
    rng = np.random.default_rng(seed)
    totals: dict[str, float] = {}
    for _ in range(draws):
        y = np.where(labelled, draw_grades(rng, p), rsna.MISSING)
        for term, value in metrics.competition_losses(study_ids, conditions, y, q).items():
            totals[term] = totals.get(term, 0.0) + value / draws
    return totals


def best_possible(labels_path: Path, study_ids: Iterable[int] | None = None, draws: int = 200,
                  seed: int = 0) -> dict | None:
    """The best possible score on the labels file's studies (or `study_ids` among them) from the answer key
    beside it: {"realised": losses on the drawn labels, "expected": their mean over rater noise,
    "prediction": the best submission frame}; None when there is no answer key."""
    key_path = find_answer_key(labels_path)
    if key_path is None:
        return None
    solution = metrics.labels_to_rows(read_csv(labels_path, rsna.LABELS_CSV, "labels"))
    if study_ids is not None:
        solution = solution[solution["study_id"].isin(list(study_ids))]
    rows = judged_rows(solution, read_csv(key_path, ANSWER_KEY_CSV, "answer key"))
    p = rows[list(PROBABILITY_COLUMNS)].to_numpy(dtype=np.float64)
    q = metrics.metric_optimal(p)
    y = rows["severity"].to_numpy(dtype=np.int64)
    study, condition = rows["study_id"].to_numpy(), rows["condition"].to_numpy()
    return {
        "realised": metrics.competition_losses(study, condition, y, q),
        "expected": expected_losses(study, condition, y != rsna.MISSING, p, q, draws, seed),
        "prediction": metrics.submission_frame(rows["row_id"], q),
    }


def gap_report(model: dict[str, float], prior: dict[str, float], best: dict | None) -> dict:
    """The score and each term: the model, the prior, the realised best possible and the share of the
    prior → best gap the model closes, (prior − model) / (prior − best); best and gap None without a key."""
    def row(term: str) -> dict:
        limit = best["realised"][term] if best else None
        gap = prior[term] - limit if limit is not None else 0.0
        closed = (prior[term] - model[term]) / gap if gap > 0 else None
        return {"score": model[term], "prior": prior[term], "best_possible": limit, "gap_closed": closed}
    return {**row("score"), "terms": {term: row(term) for term in TERMS},
            "expected_best_possible": ({term: best["expected"][term] for term in ("score", *TERMS)}
                                       if best else None)}
