"""`lumbar-fast score`: the RSNA 2024 competition score of a submission file against train.csv labels, beside
the prior, the best constant prediction and, for a real-difficulty phantom (an answer key beside the labels),
the best possible score."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pandas as pd

from lumbar_fast import metrics, rsna
from lumbar_fast.csvfile import read_csv
from lumbar_fast.phantom.answer_key import ANSWER_KEY_NAME, TERMS, best_possible, gap_report

#: the best possible score's expectation over rater noise: labels redrawn this many times
EXPECTATION_DRAWS = 200


def read_labels(path: Path) -> pd.DataFrame:
    """A train.csv-format labels file (one-line DataError when it cannot be read; labels_to_rows checks its
    values)."""
    return read_csv(path, rsna.LABELS_CSV, "labels")


def read_submission(path: Path) -> pd.DataFrame:
    """A sample_submission.csv-format file (one-line DataError when it cannot be read)."""
    return read_csv(path, rsna.SUBMISSION_CSV, "submission")


def prior_labels(labels_path: Path, labels: pd.DataFrame) -> pd.DataFrame:
    """The labels the prior is counted on: train.csv beside the labels file when there is one (a test
    split's training labels), else the labels file itself."""
    train = labels_path.parent / "train.csv"
    return read_labels(train) if train.is_file() and train.resolve() != labels_path.resolve() else labels


def prior_losses(training: pd.DataFrame, solution: pd.DataFrame,
                 study_ids: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """The competition losses on `study_ids` of the prior (each group's `metrics.class_prior` over the rows
    of `training`, labels_to_rows, predicted for every row, as evaluate's training prior) and of the best
    constant prediction (`metrics.metric_optimal` of that prior)."""
    groups = training["condition"].map(rsna.CONDITION_GROUP)
    priors = {group: metrics.class_prior(training.loc[groups == group, "severity"])
              for group in metrics.GROUPS}
    rows = solution[solution["study_id"].isin(study_ids)]
    p = np.stack([priors[group] for group in rows["condition"].map(rsna.CONDITION_GROUP)])
    judged = rows["study_id"].to_numpy(), rows["condition"].to_numpy(), rows["severity"].to_numpy()
    return (metrics.competition_losses(*judged, p),
            metrics.competition_losses(*judged, metrics.metric_optimal(p)))


def _number(value: float | None, width: int = 8) -> str:
    """A loss in a table column, '-' when unknown."""
    return f"{value:>{width}.4f}" if value is not None else f"{'-':>{width}}"


def _share(value: float | None, width: int = 8) -> str:
    """A share of the gap closed as a percentage, '-' when undefined (no gap)."""
    return f"{value:>{width}.0%}" if value is not None else f"{'-':>{width}}"


def format_score(result: dict, report: dict, n_label_studies: int) -> str:
    """A small table: each term's loss and labelled rows (studies for any_severe), its prior, the best
    constant prediction's and, where an answer key is known, the best possible (realised and expected) and the
    share of the gap closed; then the score's own figures in words, and the score alone on the last line
    (scripts read it there)."""
    best = report["expected_best_possible"]
    lines = [f"scored {result['n_studies']} of the {n_label_studies} studies in the labels",
             f"{'term':<20}{'loss':>8}{'rows':>8}{'prior':>8}{'const':>8}"
             + (f"{'best':>8}{'E[best]':>9}{'closed':>8}" if best else "")]
    for term, rows in result["n_rows"].items():
        figures = report["terms"][term]
        line = (f"{term:<20}{figures['score']:>8.4f}{rows:>8}{figures['prior']:>8.4f}"
                f"{figures['best_constant']:>8.4f}")
        if best:
            line += (f"{_number(figures['best_possible'])}{_number(best[term], 9)}"
                     f"{_share(figures['gap_closed'])}")
        lines.append(line)
    lines += [_mean_line(report), f"{'score':<20}{result['score']:>8.4f}"]
    return "\n".join(lines)


def _mean_line(report: dict) -> str:
    """The score's prior, best constant, best possible and gap closed in words; free of the last line's first
    word, since scripts read the score as the number after its last occurrence."""
    best = report["expected_best_possible"]
    baselines = (f"the mean: prior {report['prior']:.4f}, best constant {report['best_constant']:.4f} "
                 "(q ∝ 1/2/4 × prior)")
    if not best:
        return f"{baselines}, no best possible known: no {ANSWER_KEY_NAME} beside the labels"
    return (f"{baselines}, best possible {report['best_possible']:.4f} on these "
            f"labels, {best['score']:.4f} expected over rater noise ({ANSWER_KEY_NAME}, {EXPECTATION_DRAWS} "
            f"redraws), gap closed {_share(report['gap_closed'], 0)} = (prior - loss) / (prior - best)")


@click.command("score")
@click.option("--labels", "labels_path", required=True, type=click.Path(path_type=Path),
              help="train.csv-format labels: study_id and the 25 condition_level columns.")
@click.option("--submission", "submission_path", required=True, type=click.Path(path_type=Path),
              help="sample_submission.csv-format file: row_id, normal_mild, moderate, severe.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: score, prior, best_constant, best_possible, gap_closed, terms "
                   "(each term the same five keys), expected_best_possible.")
def command(labels_path: Path, submission_path: Path, as_json: bool) -> None:
    """Score a submission with the competition metric (weighted log losses 1/2/4, any_severe_spinal, mean),
    beside the prior (each group's class shares in train.csv beside the labels, else in the labels), the best
    constant prediction (that prior reweighted 1/2/4 as the metric weighs the grades) and, when a phantom
    answer key lies beside the labels, the best possible score and the share of the prior → best gap closed.

    Only the studies present in the submission are scored; each must have all its rows.
    """
    labels = read_labels(labels_path)
    solution = metrics.labels_to_rows(labels)
    submission = read_submission(submission_path)
    result = metrics.rsna_score(solution, submission)
    studies = metrics.parse_row_ids(submission["row_id"])["study_id"].unique()
    best = best_possible(labels_path, studies, draws=EXPECTATION_DRAWS)
    training = metrics.labels_to_rows(prior_labels(labels_path, labels))
    prior, constant = prior_losses(training, solution, studies)
    report = gap_report({term: result[term] for term in ("score", *TERMS)}, prior, best)
    report["best_constant"] = constant["score"]
    for term, figures in report["terms"].items():
        figures["best_constant"] = constant[term]
    click.echo(json.dumps(report, indent=1) if as_json else format_score(result, report, len(labels)))
