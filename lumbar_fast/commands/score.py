"""`lumbar-fast score`: the RSNA 2024 competition score of a submission file against train.csv labels."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from lumbar_fast import metrics, rsna
from lumbar_fast.csvfile import read_csv


def read_labels(path: Path) -> pd.DataFrame:
    """A train.csv-format labels file (one-line DataError when it cannot be read; labels_to_rows checks its
    values)."""
    return read_csv(path, rsna.LABELS_CSV, "labels")


def read_submission(path: Path) -> pd.DataFrame:
    """A sample_submission.csv-format file (one-line DataError when it cannot be read)."""
    return read_csv(path, rsna.SUBMISSION_CSV, "submission")


def format_score(result: dict, n_label_studies: int) -> str:
    """A small table: each term's loss and labelled rows (studies for any_severe), then the score."""
    lines = [f"scored {result['n_studies']} of the {n_label_studies} studies in the labels",
             f"{'term':<20}{'loss':>8}{'rows':>8}"]
    lines += [f"{term:<20}{result[term]:>8.4f}{rows:>8}" for term, rows in result["n_rows"].items()]
    lines.append(f"{'score':<20}{result['score']:>8.4f}")
    return "\n".join(lines)


@click.command("score")
@click.option("--labels", "labels_path", required=True, type=click.Path(path_type=Path),
              help="train.csv-format labels: study_id and the 25 condition_level columns.")
@click.option("--submission", "submission_path", required=True, type=click.Path(path_type=Path),
              help="sample_submission.csv-format file: row_id, normal_mild, moderate, severe.")
def command(labels_path: Path, submission_path: Path) -> None:
    """Score a submission with the competition metric (weighted log losses 1/2/4, any_severe_spinal, mean).

    Only the studies present in the submission are scored; each must have all its rows.
    """
    labels = read_labels(labels_path)
    result = metrics.rsna_score(metrics.labels_to_rows(labels), read_submission(submission_path))
    click.echo(format_score(result, n_label_studies=len(labels)))
