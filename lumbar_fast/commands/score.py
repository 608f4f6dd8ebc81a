"""`lumbar-fast score`: the RSNA 2024 competition score of a submission file against train.csv labels."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from lumbar_fast import metrics
from lumbar_fast.errors import LumbarFastError


def read_csv(path: Path, what: str, **kwargs) -> pd.DataFrame:
    """A CSV file as a DataFrame; a missing, empty or malformed file is a one-line error naming `what`."""
    if not path.is_file():
        raise LumbarFastError(f"{what} file not found: {path}")
    try:
        return pd.read_csv(path, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LumbarFastError(f"cannot read {what} file {path}: {exc}".splitlines()[0]) from None


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
    labels = read_csv(labels_path, "labels")
    submission = read_csv(submission_path, "submission", dtype={"row_id": str})
    result = metrics.rsna_score(metrics.labels_to_rows(labels), submission)
    click.echo(format_score(result, n_label_studies=len(labels)))
