"""`lumbar-fast score` through the CLI: the score table, one-line errors for every bad-input case, the prior
and the best possible score of a real-difficulty phantom (its answer key)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumbar_fast import metrics, rsna
from lumbar_fast.cli import main
from lumbar_fast.phantom import PitfallRates, grading
from lumbar_fast.phantom.answer_key import TERMS, best_possible, expected_losses
from lumbar_fast.phantom.options import REAL_FREQUENCIES


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


# --- the prior and the best possible score ------------------------------------------------------------------

def run_json(capsys, labels: Path, submission: Path) -> dict:
    """`lumbar-fast score --json` run in-process, its output parsed."""
    main(["score", "--labels", str(labels), "--submission", str(submission), "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def simulated() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The phantom's truth of 300 studies at the real class balance, without pixels."""
    return grading.simulate(np.random.default_rng(3), 300, REAL_FREQUENCIES)


def test_best_possible_beats_the_prior_on_every_term(simulated):
    study, conditions, p = simulated
    labelled = np.ones(len(study), dtype=bool)
    prior = np.array([REAL_FREQUENCIES[rsna.CONDITION_GROUP[c]] for c in conditions])
    best = expected_losses(study, conditions, labelled, p, metrics.metric_optimal(p), draws=20)
    baseline = expected_losses(study, conditions, labelled, p, prior, draws=20)
    for term in ("score", *TERMS):
        assert best[term] < 0.8 * baseline[term], term


def test_no_perturbation_of_the_best_prediction_beats_its_expected_score(simulated):
    """A small random search around q ∝ (1, 2, 4)·p, each candidate scored on the same label redraws."""
    study, conditions, p = simulated
    labelled = np.ones(len(study), dtype=bool)
    q = metrics.metric_optimal(p)
    best = expected_losses(study, conditions, labelled, p, q, draws=30)["score"]
    rng = np.random.default_rng(0)
    for scale in (0.05, 0.2, 0.5):
        for _ in range(4):
            tilted = q * np.exp(scale * rng.standard_normal(q.shape))
            candidate = tilted / tilted.sum(axis=1, keepdims=True)
            assert expected_losses(study, conditions, labelled, p, candidate, draws=30)["score"] > best, scale
    plain = expected_losses(study, conditions, labelled, p, p, draws=30)["score"]
    assert plain > best  # p itself is not the best answer: the metric weighs by the true grade


@pytest.fixture(scope="module")
def real_phantom(make_synth) -> Path:
    """The real-difficulty phantom of test_phantom.py (same arguments, so built once per session)."""
    return make_synth(4, 2, seed=5, image_size=64, difficulty="real",
                      pitfalls=PitfallRates.none().with_rates(missing_label=0.1))


def test_score_json_on_a_phantom_test_split(capsys, tmp_path, real_phantom):
    labels = real_phantom / "test_labels.csv"
    uniform = run_json(capsys, labels, real_phantom / "sample_submission.csv")
    assert set(uniform) >= {"score", "prior", "best_constant", "best_possible", "gap_closed", "terms"}
    assert set(uniform["terms"]) == set(TERMS)
    for figures in [uniform, *uniform["terms"].values()]:
        assert set(figures) >= {"score", "prior", "best_constant", "best_possible", "gap_closed"}
        assert 0 < figures["best_possible"] < figures["score"] and figures["best_constant"] > 0
    for term in metrics.GROUPS:  # the uniform sample submission
        assert uniform["terms"][term]["score"] == pytest.approx(np.log(3))
    expected = uniform["expected_best_possible"]
    assert set(expected) == {"score", *TERMS} and 0 < expected["score"] < uniform["score"]

    limit = best_possible(labels)
    limit["prediction"].to_csv(tmp_path / "best.csv", index=False)
    best = run_json(capsys, labels, tmp_path / "best.csv")
    assert best["score"] == pytest.approx(best["best_possible"], abs=1e-6)
    for term, figures in best["terms"].items():
        assert figures["score"] == pytest.approx(limit["realised"][term], abs=1e-6)
        assert figures["gap_closed"] is None or figures["gap_closed"] == pytest.approx(1.0, abs=1e-6)


def test_score_table_shows_the_best_possible_beside_an_answer_key_only(capsys, files, real_phantom):
    labels, submission = real_phantom / "test_labels.csv", real_phantom / "sample_submission.csv"
    code, out, err = run_score(capsys, labels, submission)
    assert code == 0, err
    header = ["term", "loss", "rows", "prior", "const", "best", "E[best]", "closed"]
    assert out.splitlines()[1].split() == header
    assert "best possible" in out.splitlines()[-2] and "gap closed" in out.splitlines()[-2]
    assert float(out.split("score")[-1]) > 0  # the score alone on the last line, as test_evaluate reads it
    code, out, _ = run_score(capsys, files["labels"], files["submission"])
    assert out.splitlines()[1].split() == ["term", "loss", "rows", "prior", "const"]
    assert "no best possible known" in out.splitlines()[-2] and float(out.split("score")[-1]) > 0
    main(["score", "--labels", str(files["labels"]), "--submission", str(files["submission"]), "--json"])
    plain = json.loads(capsys.readouterr().out)
    assert plain["best_possible"] is None and plain["gap_closed"] is None
    assert plain["prior"] > 0 and all(t["best_possible"] is None for t in plain["terms"].values())
