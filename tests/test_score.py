"""`lumbar-fast score` through the CLI: the score table, and one-line errors for every bad-input case."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumbar_fast import metrics, rsna
from lumbar_fast.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """train.csv (4 studies, some empty cells) and a matching valid submission.csv."""
    folder = tmp_path_factory.mktemp("score")
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"study_id": [101, 202, 303, 404]})
    for column in rsna.LABEL_COLUMNS:
        train[column] = np.where(rng.random(4) < 0.2, None, rng.choice(rsna.SEVERITIES, 4))
    rows = metrics.labels_to_rows(train)
    submission = metrics.submission_frame(rows["row_id"], rng.dirichlet([1, 1, 1], len(rows)))
    paths = {"labels": folder / "train.csv", "submission": folder / "submission.csv"}
    train.to_csv(paths["labels"], index=False)
    submission.to_csv(paths["submission"], index=False)
    return paths


def run_score(capsys, labels: Path, submission: Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `lumbar-fast score` run in-process."""
    try:
        main(["score", "--labels", str(labels), "--submission", str(submission)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_score_prints_the_table(capsys, files):
    code, out, err = run_score(capsys, files["labels"], files["submission"])
    assert code == 0, err
    expected = metrics.rsna_score(metrics.labels_to_rows(pd.read_csv(files["labels"])),
                                  pd.read_csv(files["submission"]))
    lines = out.splitlines()
    assert lines[0] == "scored 4 of the 4 studies in the labels"
    for term in (*metrics.GROUPS, metrics.ANY_SEVERE, "score"):
        line = next(line for line in lines if line.split()[0] == term)
        assert float(line.split()[1]) == pytest.approx(expected[term], abs=1e-4)


def edited(tmp_path: Path, source: Path, change) -> Path:
    """A copy of the submission CSV with `change` applied to its frame."""
    path = tmp_path / "edited.csv"
    change(pd.read_csv(source)).to_csv(path, index=False)
    return path


def set_cell(column: str, value):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame[column] = frame[column].astype(object)
        frame.loc[3, column] = value
        return frame
    return change


@pytest.mark.parametrize("change, message", [
    (lambda f: f.drop(index=5), "lacks row_ids of its studies: 1 row_id(s), first '101_"),
    (lambda f: pd.concat([f, f.iloc[[7]]]), "duplicate row_ids"),
    (set_cell("row_id", "999_spinal_canal_stenosis_l1_l2"), "not in the labels: 1 row_id(s), first '999_"),
    (set_cell("severe", 0.5), "rows not summing to 1"),
    (lambda f: f.assign(normal_mild=f["normal_mild"] + f["moderate"] + 0.1, moderate=-0.1), "negative"),
    (set_cell("moderate", float("nan")), "NaN"),
    (set_cell("moderate", "high"), "column moderate, row 4: 'high' is not a number"),
    (lambda f: f.drop(columns=["severe"]), "lacks the column(s) severe"),
    (lambda f: f.assign(extra=1), "submission columns are"),
    (lambda f: f.iloc[:0], "no rows"),
])
def test_bad_submission_is_a_one_line_error(capsys, tmp_path, files, change, message):
    code, out, err = run_score(capsys, files["labels"], edited(tmp_path, files["submission"], change))
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


@pytest.mark.parametrize("which", ["labels", "submission"])
def test_missing_or_empty_file_is_a_one_line_error(capsys, tmp_path, files, which):
    paths = dict(files)
    paths[which] = tmp_path / "absent.csv"
    code, _, err = run_score(capsys, paths["labels"], paths["submission"])
    assert code == 2 and err == f"error: {which} file {paths[which]} does not exist\n"
    paths[which].write_text("")
    code, _, err = run_score(capsys, paths["labels"], paths["submission"])
    assert code == 2 and err.startswith(f"error: {which} file {paths[which]} is not a readable CSV")
    assert err.count("\n") == 1


def test_labels_without_label_columns_is_an_error(capsys, files):
    code, _, err = run_score(capsys, files["submission"], files["submission"])
    assert code == 2 and err.startswith(f"error: labels file {files['submission']} lacks the column(s) "
                                        "study_id")
