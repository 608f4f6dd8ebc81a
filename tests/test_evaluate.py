"""evaluate: per-item losses, baselines with per-run priors, tables; and the round trip on the phantom —
ingest → train three runs → predict → score gives the competition score evaluate reports."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumbar_fast import metrics, rsna
from lumbar_fast.cache import open_cache
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.runs import read_runs, train
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.evaluate import (
    EvaluateOptions,
    evaluation_cache,
    item_losses,
    localisation_figures,
    phantom_limits,
    sequence_summary,
)
from lumbar_fast.locator import metrics as loc
from lumbar_fast.locator.runs import RunEvaluation, evaluate_run
from lumbar_fast.predict import PROBABILITY_COLUMNS
from lumbar_fast.report import competition_line, competition_markdown, format_table
from lumbar_fast.runfolder import RunFolder


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


# -- on runs trained on the phantom ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluated(trained_runs, tmp_path_factory, run_cli) -> tuple[Path, dict, str]:
    """evaluate of the three trained runs: (report folder, report.json, stdout)."""
    out = tmp_path_factory.mktemp("evaluate") / "report"
    code, stdout, stderr = run_cli("evaluate", *trained_runs.values(), "--out", out,
                                          "--bootstrap", 50, "--device", "cpu")
    assert code == 0, stderr
    return out, json.loads((out / "report.json").read_text()), stdout



def validation_studies(run: Path) -> np.ndarray:
    """The studies of a run's validation fold, from its split.csv."""
    split = pd.read_csv(run / "split.csv")
    return split.loc[split["fold"] == RunFolder(run).read_config()["fold"], "study_id"].to_numpy()


def test_predict_then_score_gives_evaluates_competition_score(evaluated, trained_runs, synth_cache,
                                                               synth_data, tmp_path, run_cli):
    _, report, _ = evaluated
    submission_path = tmp_path / "submission.csv"
    code, _, stderr = run_cli("predict", *trained_runs.values(), "--cache", synth_cache, "--out",
                              submission_path, "--allow-prior", "--device", "cpu")
    assert code == 0, stderr
    submission = pd.read_csv(submission_path)
    study_of_row = metrics.parse_row_ids(submission["row_id"])["study_id"]
    validation = submission[study_of_row.isin(validation_studies(trained_runs["sag_t2"])).to_numpy()]
    validation_path = tmp_path / "validation.csv"
    validation.to_csv(validation_path, index=False)
    code, stdout, stderr = run_cli("score", "--labels", synth_data / "train.csv", "--submission",
                                   validation_path)
    assert code == 0, stderr
    printed = float(stdout.split("score")[-1])
    competition = report["competition"]
    assert printed == pytest.approx(competition["model"]["score"], abs=1e-4)
    solution = metrics.labels_to_rows(pd.read_csv(synth_data / "train.csv"))
    scored = metrics.rsna_score(solution, validation)
    for term in (*metrics.GROUPS, metrics.ANY_SEVERE, "score"):
        assert scored[term] == pytest.approx(competition["model"][term], abs=1e-6)
    assert scored["n_studies"] == competition["studies"] == len(validation_studies(trained_runs["sag_t2"]))


def test_per_sequence_figures_are_the_runs_validation_figures(evaluated, trained_runs):
    _, report, _ = evaluated
    for seq, run in trained_runs.items():
        best = [record for record in RunFolder(run).read_metrics() if record["best"]][-1]
        figures = report["sequences"][seq]
        assert figures["n"] == best["val_n"]
        for key in ("accuracy", "majority_accuracy", "balanced_accuracy", "weighted_log_loss",
                    "prior_weighted_log_loss", "constant_weighted_log_loss"):
            assert figures[key] == pytest.approx(best[f"val_{key}"], abs=1e-6)
            low, high = figures["intervals"][key]
            assert low <= high


def test_report_files_state_baselines_and_oracle_localisation(evaluated, trained_runs):
    out, report, stdout = evaluated
    names = {"report.md", "report.json", "predictions.csv", "confusion.png",
             *(f"most_wrong_{seq}.png" for seq in trained_runs)}
    assert names <= {path.name for path in out.iterdir()}
    for name in names - {"report.md", "report.json", "predictions.csv"}:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "report.md").read_text()
    for text in ("oracle localisation", "majority class", "training prior", "prior only", "best constant",
                 "Competition score", "| Severe |"):
        assert text in markdown
    for text in ("oracle localisation", "majority class", "training prior", "competition score", "prior only",
                 "best constant", *trained_runs):
        assert text in stdout
    assert report["competition"]["prior"]["score"] > 0 and report["competition"]["constant"]["score"] > 0
    predictions = pd.read_csv(out / "predictions.csv")
    assert set(predictions["study_id"]) <= set(validation_studies(trained_runs["sag_t2"]))
    assert np.allclose(predictions[list(PROBABILITY_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)


def test_runs_of_every_fold_give_out_of_fold_predictions(trained_runs, synth_cache, tmp_path, run_cli):
    more = [train(TrainConfig(sequence="sag_t2", cache=str(synth_cache), run_dir=str(tmp_path / f"fold{k}"),
                              model="test_efficientnet", pretrained=False, epochs=1, batch_size=8, folds=3,
                              fold=k, loader="torch", workers=1, device="cpu", progress=False,
                              limit_batches=1))
            for k in (1, 2)]
    out = tmp_path / "report"
    out.mkdir()  # an earlier report of other runs, and a file of the user's
    for name in ("most_wrong_ax_t2.png", "locator_predictions.csv", "notes.txt", "report.json"):
        (out / name).write_text("earlier")
    code, stdout, stderr = run_cli("evaluate", trained_runs["sag_t2"], *more, "--out", out, "--bootstrap", 20,
                                   "--device", "cpu")
    assert code == 0, stderr
    assert sorted(path.name for path in out.iterdir()) == [  # one report's files, and the user's kept
        "confusion.png", "most_wrong_sag_t2.png", "notes.txt", "predictions.csv", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    figures = report["sequences"]["sag_t2"]
    assert figures["coverage"] == "out-of-fold, all 3 folds" and "out-of-fold" in stdout
    predictions = pd.read_csv(out / "predictions.csv")
    split = pd.read_csv(trained_runs["sag_t2"] / "split.csv")
    assert sorted(predictions.groupby("study_id")["fold"].first().items()) == \
        sorted(split[split["study_id"].isin(predictions["study_id"])].itertuples(index=False, name=None))
    assert figures["n"] == int((predictions["severity"] != rsna.MISSING).sum())
    assert report["competition"] is None and "competition score: not computed" in stdout  # one sequence


def test_bad_input_is_one_line_error(trained_runs, tmp_path, run_cli):
    runs = list(trained_runs.values())
    cases = {
        "does not exist": [tmp_path / "nowhere", "--out", tmp_path / "r"],
        "run folder " + str(Path(__file__)) + " is a file": [Path(__file__), "--out", tmp_path / "r"],
        "both sag_t2 fold 0": [runs[1], runs[1], "--out", tmp_path / "r"],
        "no-cache.zarr": [runs[0], "--cache", tmp_path / "no-cache.zarr", "--out", tmp_path / "r"],
        "'--out': Directory": [runs[0], "--out", Path(__file__)],  # a file: refused before any work
    }
    for message, args in cases.items():
        code, _, stderr = run_cli("evaluate", *args)
        assert code == 2 and stderr.startswith("error:") and len(stderr.strip().splitlines()) == 1, stderr
        assert message in stderr


def test_runs_no_one_cache_fits_are_told_to_go_separately(trained_runs):
    runs = read_runs(list(trained_runs.values()))
    assert evaluation_cache(runs, None).path == runs[0].cache  # one cache: theirs
    moved = dataclasses.replace(runs[1], cache=Path("elsewhere.zarr"))
    with pytest.raises(LumbarFastError, match="different caches .*; give --cache"):
        evaluation_cache([runs[0], moved], None)
    smaller = dataclasses.replace(moved, settings=dataclasses.replace(moved.settings, size=32))
    with pytest.raises(LumbarFastError, match="caches of different images .* separate calls"):
        evaluation_cache([runs[0], smaller], None)


# -- locator runs ----------------------------------------------------------------------------------------
def labelled_points(synth_cache: Path, sequence: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A sequence's level labels and stack index from the cache."""
    cache = open_cache(synth_cache)
    return (cache.level_labels(sequence).reset_index(drop=True),
            cache.stack_index(sequence).reset_index(drop=True))


def test_labels_as_predictions_are_perfect_and_the_table_summarises_like_the_metrics(synth_cache):
    labels, stack_index = labelled_points(synth_cache, "sag_t1")
    table = loc.point_errors(labels, labels, stack_index)
    assert len(table) == len(labels.drop_duplicates(["study_id", "series_id", "condition", "level"]))
    assert (table["error_mm"] == 0).all() and (table["slice_error"] == 0).all() and table["level_right"].all()
    summary = loc.summarise_localisation(table)
    assert summary == loc.localisation_metrics(labels, labels, stack_index)
    assert summary["point_error_median_mm"] == summary["point_error_p90_mm"] == 0
    assert summary["slice_exact"] == summary["slice_within_1"] == summary["level_name_accuracy"] == 1.0
    shifted = labels.assign(slice=labels["slice"] + 2, x=labels["x"] + 3)
    assert loc.localisation_metrics(shifted, labels, stack_index)["slice_within_1"] == 0.0
    assert loc.summarise_localisation(table.iloc[:0])["points"] == 0


def test_localisation_figures_of_perfect_points_have_exact_intervals(synth_cache):
    labels, stack_index = labelled_points(synth_cache, "sag_t2")
    perfect = loc.point_errors(labels, labels, stack_index)
    off = labels.assign(x=labels["x"] + 10.0)  # 10 pixels off in x: > 0 mm everywhere
    run = RunEvaluation(Path("run"), "sag_t2", 0, pd.DataFrame(), {}, labels, perfect,
                        loc.point_errors(off, labels, stack_index))
    figures = localisation_figures([run], EvaluateOptions(n_boot=30))
    assert figures["studies"] == labels["study_id"].nunique()
    assert figures["model"]["point_error_median_mm"] == 0 and figures["model"]["level_name_accuracy"] == 1
    assert figures["intervals"]["model"]["point_error_p90_mm"] == (0.0, 0.0)
    assert figures["intervals"]["model"]["slice_exact"] == (1.0, 1.0)
    low, high = figures["intervals"]["baseline"]["point_error_median_mm"]
    assert 0 < low <= figures["baseline"]["point_error_median_mm"] <= high


def test_locator_runs_of_every_fold_are_reported_out_of_fold(locator_runs, tmp_path, run_cli):
    out = tmp_path / "report"
    out.mkdir()
    (out / "predictions.csv").write_text("the user's own")  # no earlier report here: nothing is pruned
    code, stdout, stderr = run_cli("evaluate", *locator_runs, "--out", out, "--bootstrap", 20,
                                   "--device", "cpu")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert "sequences" not in report and (out / "predictions.csv").read_text() == "the user's own"
    figures = report["localisation"]["sequences"]["sag_t2"]
    assert figures["coverage"] == "out-of-fold, all 3 folds"
    evaluations = [evaluate_run(run, device="cpu") for run in locator_runs]
    assert figures["model"]["points"] == sum(ev.metrics["val_points"] for ev in evaluations)
    for key in loc.LOCALISATION_FIGURES:
        for who in ("model", "baseline"):
            low, high = figures["intervals"][who][key]
            assert low <= figures[who][key] <= high, (who, key)
    located = pd.read_csv(out / "locator_predictions.csv")
    split = pd.read_csv(locator_runs[0] / "split.csv")
    assert sorted(located.groupby("study_id")["fold"].first().items()) == \
        sorted(split[split["study_id"].isin(located["study_id"])].itertuples(index=False, name=None))
    assert int(located["error_mm"].notna().sum()) == figures["model"]["points"]
    assert "Localisation" in stdout and "mean-position baseline" in stdout and "out-of-fold" in stdout
    assert "locator_predictions.csv" in stdout
    markdown = (out / "report.md").read_text()
    assert "## Localisation" in markdown and "↳ mean-position baseline" in markdown
    assert f"{figures['model']['point_error_median_mm']:.2f} [" in markdown


def test_classifier_and_locator_runs_together(trained_runs, locator_runs, tmp_path, run_cli):
    out = tmp_path / "report"
    code, stdout, stderr = run_cli("evaluate", trained_runs["sag_t2"], locator_runs[0], "--out", out,
                                   "--bootstrap", 20, "--device", "cpu")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report["sequences"]) == ["sag_t2"]
    assert report["runs"] == [{"path": str(trained_runs["sag_t2"]), "sequence": "sag_t2", "fold": 0}]
    assert report["localisation"]["runs"] == [{"path": str(locator_runs[0]), "sequence": "sag_t2", "fold": 0}]
    assert report["localisation"]["sequences"]["sag_t2"]["coverage"] == "fold 0"
    assert stdout.index("weighted log loss") < stdout.index("Localisation")
    markdown = (out / "report.md").read_text()
    assert markdown.count("# lumbar-fast evaluate") == 1
    assert markdown.index("## Per sequence") < markdown.index("## Localisation")
    assert {"predictions.csv", "locator_predictions.csv", "confusion.png"} <= {p.name for p in out.iterdir()}


def test_bad_locator_input_is_one_line_error(locator_runs, synth_data, make_cache, tmp_path, run_cli):
    broken = tmp_path / "broken"
    shutil.copytree(locator_runs[0], broken)
    (broken / "best.pt").write_bytes(b"not a checkpoint")
    no_split = tmp_path / "no_split"
    shutil.copytree(locator_runs[0], no_split)
    (no_split / "split.csv").unlink()
    cases = {
        "lacks": [locator_runs[0], "--cache", make_cache(synth_data, split="test")],
        "cannot read checkpoint": [broken],
        "not a readable locator run": [no_split],
        "both sag_t2 fold 0": [locator_runs[0], locator_runs[0]],
    }
    for message, args in cases.items():
        code, _, stderr = run_cli("evaluate", *args, "--out", tmp_path / "r", "--device", "cpu")
        assert code == 2 and stderr.startswith("error:") and len(stderr.strip().splitlines()) == 1, stderr
        assert message in stderr


def test_on_a_real_difficulty_phantom_the_score_stands_beside_the_best_possible(make_synth, make_cache):
    """evaluate finds the answer key beside the cache's labels file: the best possible score of the judged
    studies and the gap closed, per term; a prediction equal to the prior closes none of it."""
    data = make_synth(6, seed=21, difficulty="real")
    reader = open_cache(make_cache(data, size=32, channels=3, workers=1))
    studies = reader.study_labels()["study_id"].to_numpy()[:4]
    solution = metrics.labels_to_rows(reader.study_labels().query("study_id in @studies"))
    y = solution["severity"].to_numpy()
    uniform = np.full((len(y), 3), 1 / 3)
    prior = metrics.competition_losses(solution["study_id"], solution["condition"], y, uniform)
    limits = phantom_limits(reader, studies, prior, prior)
    assert limits["best_possible"] < limits["score"] and limits["gap_closed"] == pytest.approx(0.0)
    assert set(limits["terms"]) == {*metrics.GROUPS, metrics.ANY_SEVERE}
    intervals = {"score": (0.0, 1.0), "prior_score": (0.0, 1.0), "constant_score": (0.0, 1.0)}
    score = {"model": prior, "prior": prior, "constant": prior, "intervals": intervals, "studies": 4,
             "filled_rows": 0, "limits": limits}
    assert f"best possible {limits['best_possible']:.3f} (gap closed 0 %)" in competition_line(score)
    assert "| best possible | gap closed |" in competition_markdown(score)
    assert phantom_limits(open_cache(make_cache(make_synth(6, seed=21), size=32, channels=3, workers=1)),
                          studies, prior, prior) is None  # an easy phantom has no answer key


def test_each_rows_prior_baseline_is_its_validating_runs():
    """Another fold's run trained on the study: its prior would hold the study's own labels."""
    from lumbar_fast.evaluate import PRIOR_COLUMNS, validating_priors

    solution = pd.DataFrame({"study_id": [1, 2, 3], "condition": ["spinal_canal_stenosis"] * 3})
    crops = pd.DataFrame({"study_id": [1, 1, 2], "sequence": ["sag_t2"] * 3})
    crops[list(PRIOR_COLUMNS)] = [[0.8, 0.1, 0.1], [0.8, 0.1, 0.1], [0.6, 0.3, 0.1]]  # folds 0, 0, 1
    mean = np.array([0.7, 0.2, 0.1])
    got = validating_priors(solution, crops, {"sag_t2": mean})
    np.testing.assert_allclose(got, [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], mean])  # study 3: no crop
