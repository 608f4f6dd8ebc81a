"""predict: submission rows (crops joined, prior filling), flip TTA, run checks, and the command end to end on
runs trained on the phantom (the round trip predict → score = evaluate is in test_evaluate.py)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from torch import nn

from lumbar_fast import metrics, rsna
from lumbar_fast.cache import ImageSettings, open_cache
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.runs import read_runs, train
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.locator.config import LocatorConfig
from lumbar_fast.locator.runs import train_locator
from lumbar_fast.models.tta import FlipAverage
from lumbar_fast.predict import (
    LOCATION,
    PROBABILITY_COLUMNS,
    fill_rows,
    location_probabilities,
)
from lumbar_fast.runfolder import BEST, CONFIG, RunFolder

PRIORS = {"sag_t1": np.array([0.7, 0.2, 0.1]), "sag_t2": np.array([0.8, 0.1, 0.1]),
          "ax_t2": np.array([0.6, 0.3, 0.1])}


def solution_of(study_ids: list[int]) -> pd.DataFrame:
    """labels_to_rows of studies whose labels are all Normal/Mild."""
    labels = pd.DataFrame({"study_id": study_ids, **{column: 0 for column in rsna.LABEL_COLUMNS}})
    return metrics.labels_to_rows(labels)


def random_located(rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Random probabilities for the given rows' locations."""
    probs = np.random.default_rng(seed).dirichlet([1, 1, 1], len(rows))
    columns = dict(zip(PROBABILITY_COLUMNS, probs.T, strict=True))
    return rows[LOCATION].reset_index(drop=True).assign(**columns)


def test_fill_rows_joins_located_probabilities_and_fills_the_best_constant():
    solution = solution_of([11, 22])
    no_crop = (solution["study_id"] == 22) & (solution["condition"] == "spinal_canal_stenosis")
    located = random_located(solution[~no_crop])
    result = fill_rows(solution, located, PRIORS)
    assert result.filled.tolist() == no_crop.tolist()
    assert np.allclose(result.probabilities[no_crop.to_numpy()], metrics.metric_optimal(PRIORS["sag_t2"]))
    kept = result.rows[~result.filled].merge(located, on=LOCATION, suffixes=("", "_located"))
    assert np.allclose(kept[list(PROBABILITY_COLUMNS)].to_numpy(),
                       kept[[f"{c}_located" for c in PROBABILITY_COLUMNS]].to_numpy())
    submission = result.submission()
    metrics.check_submission(submission)
    assert submission["row_id"].tolist() == solution["row_id"].tolist()


def test_location_probabilities_average_the_crops_of_one_location():
    solution = solution_of([5])
    crops = pd.concat([random_located(solution, seed=1), random_located(solution.iloc[:2], seed=2)])
    located = location_probabilities(crops)
    assert len(located) == 25
    first = located.merge(solution.iloc[:1][LOCATION])[list(PROBABILITY_COLUMNS)].to_numpy()
    expected = crops.merge(solution.iloc[:1][LOCATION])[list(PROBABILITY_COLUMNS)].mean().to_numpy()
    assert np.allclose(first, expected)


def test_flip_average_is_the_mean_of_image_and_mirror_probabilities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3)).eval()
    images = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = (model(images).softmax(1) + model(images.flip(-1)).softmax(1)) / 2
        averaged = FlipAverage(model)(images).softmax(1)
        plain = model(images).softmax(1)
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert not torch.allclose(averaged, plain, atol=1e-3)  # the mirror does count


def fake_run(path: Path, sequence: str = "sag_t2", fold: int = 0, view: str = "level",
             best: bool = True) -> Path:
    """A run folder with the files read_runs looks at (config, metrics, best.pt), no model."""
    run = RunFolder(path)
    run.write_config({"sequence": sequence, "fold": fold, "folds": 3, "view": view, "cache": "c",
                      "augment": "none"}, ImageSettings().record())
    run.file("metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_prior": [0.8, 0.1, 0.1]}) + "\n")
    if best:
        run.save_checkpoint(BEST, {})
    return path


def damaged_config(path: Path, text: str) -> Path:
    """A fake run whose config.json holds `text`."""
    (fake_run(path) / CONFIG).write_text(text)
    return path


def test_read_runs_refuses_bad_run_folders(tmp_path):
    good = fake_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    cases = {
        "cannot read .*config.json: Expecting": [damaged_config(tmp_path / "cut", '{"arguments": {')],
        "config.json is damaged": [damaged_config(tmp_path / "list", "[]")],
        "does not exist": [tmp_path / "nowhere"],
        "not a run folder": [tmp_path / "empty"],
        "has no best.pt": [fake_run(tmp_path / "unfinished", best=False)],
        "slice view": [fake_run(tmp_path / "slice", view="slice")],
        "both sag_t2 fold 0": [good, fake_run(tmp_path / "again")],
        "at least one": [],
    }
    for message, paths in cases.items():
        with pytest.raises(LumbarFastError, match=message):
            read_runs(paths)
    runs = read_runs([good, fake_run(tmp_path / "fold1", fold=1)])
    assert [(r.sequence, r.fold) for r in runs] == [("sag_t2", 0), ("sag_t2", 1)]
    assert np.allclose(runs[0].prior, [0.8, 0.1, 0.1])


# -- the command, on runs trained on the phantom ------------------------------------------------------------
def test_predict_writes_every_study_and_fills_missing_crops_only_when_allowed(trained_runs, synth_cache,
                                                                               tmp_path, run_cli):
    runs = list(trained_runs.values())
    out = tmp_path / "submission.csv"
    code, _, stderr = run_cli("predict", *runs, "--cache", synth_cache, "--out", out, "--device", "cpu")
    assert code == 2 and not out.exists()
    assert re.fullmatch(r"error: \d+ studies lack crops for \d+ rows \(first: study \d+, \w+ l\d_[ls]\d; "
                        r"crops are cut at .*\); pass --allow-prior .*\n", stderr), stderr
    code, stdout, stderr = run_cli("predict", *runs, "--cache", synth_cache, "--out", out, "--allow-prior",
                                   "--device", "cpu")
    assert code == 0, stderr
    submission = pd.read_csv(out)
    metrics.check_submission(submission)
    cache = open_cache(synth_cache)
    labels = cache.study_labels()
    assert submission["row_id"].tolist() == metrics.labels_to_rows(labels)["row_id"].tolist()
    assert len(submission) == 25 * len(labels)
    located = {key for seq in rsna.SEQUENCES
               for key in cache.level_labels(seq)[LOCATION].itertuples(index=False, name=None)}
    rows = metrics.parse_row_ids(submission["row_id"])
    no_crop = [key not in located for key in rows[LOCATION].itertuples(index=False, name=None)]
    assert f"{sum(no_crop)} rows of" in stdout
    priors = {seq: metrics.metric_optimal(read_runs([run])[0].prior) for seq, run in trained_runs.items()}
    expected = np.stack([priors[rsna.SEQUENCE_OF_CONDITION[c]] for c in rows.loc[no_crop, "condition"]])
    assert np.allclose(submission.loc[no_crop, list(rsna.SUBMISSION_COLUMNS)].to_numpy(), expected)



def test_tta_follows_each_runs_flip_policy(trained_runs, synth_cache, tmp_path, run_cli):
    """--tta averages over the horizontal mirror only for runs trained with horizontal flips: the default
    recipe flips no sequence, so it changes nothing there, and a run trained with --augment all changes."""
    def predict(runs: list[Path], name: str, *extra: str) -> pd.DataFrame:
        out = tmp_path / name
        code, stdout, stderr = run_cli("predict", *runs, "--cache", synth_cache, "--out", out,
                                       "--allow-prior", "--device", "cpu", *extra)
        assert code == 0, stderr
        assert ("flip TTA for" in stdout) == bool(extra)
        submission = pd.read_csv(out)
        metrics.check_submission(submission)
        return submission[list(rsna.SUBMISSION_COLUMNS)]

    defaults = list(trained_runs.values())
    assert not any(run.hflip for run in read_runs(defaults))
    assert np.array_equal(predict(defaults, "plain.csv"), predict(defaults, "tta.csv", "--tta"))
    flipping = train(TrainConfig(sequence="sag_t2", cache=str(synth_cache), run_dir=str(tmp_path / "flips"),
                                 model="test_efficientnet", pretrained=False, epochs=1, batch_size=8, folds=3,
                                 augment="all", loader="torch", workers=1, device="cpu", progress=False))
    assert read_runs([flipping])[0].hflip
    mixed = [trained_runs["sag_t1"], flipping, trained_runs["ax_t2"]]
    plain, averaged = predict(mixed, "flip-plain.csv"), predict(mixed, "flip-tta.csv", "--tta")
    assert not np.allclose(plain, averaged)


def test_predict_bad_input_is_one_line_error(trained_runs, synth_cache, make_cache, synth_data, tmp_path,
                                             run_cli):
    runs = list(trained_runs.values())
    old = tmp_path / "old.zarr"
    shutil.copytree(synth_cache, old)
    zarr.open_group(old, mode="r+").attrs["schema_version"] = 0
    cases = {
        "no run for sequence(s) sag_t1": [*runs[1:], "--cache", synth_cache],
        "schema version 0": [*runs, "--cache", old],
        "does not exist": [*runs, tmp_path / "nowhere", "--cache", synth_cache],
        # test studies without coordinates: --allow-prior would make a submission of priors alone
        "no level crops of any run's sequence": [*runs, "--cache", make_cache(synth_data, split="test")],
    }
    labels = tmp_path / "train.csv"  # --out naming a file that is not a submission: kept
    labels.write_text("study_id,spinal_canal_stenosis_l1_l2\n1,Normal/Mild\n")
    code, _, stderr = run_cli("predict", *runs, "--cache", synth_cache, "--out", labels, "--allow-prior")
    assert code == 2 and "exists and is not a submission (its first line: 'study_id," in stderr, stderr
    assert labels.read_text() == "study_id,spinal_canal_stenosis_l1_l2\n1,Normal/Mild\n"
    for message, args in cases.items():
        code, _, stderr = run_cli("predict", *args, "--out", tmp_path / "s.csv", "--allow-prior")
        assert code == 2 and stderr.startswith("error:") and len(stderr.strip().splitlines()) == 1, stderr
        assert message in stderr
    assert not (tmp_path / "s.csv").exists()


def test_predict_with_locators_crops_at_the_located_points(trained_runs, make_cache, synth_data, tmp_path,
                                                            run_cli):
    small = make_cache(synth_data, limit_studies=3)  # same image parameters as the runs' cache
    small_locator = {"model": "test_efficientnet", "pretrained": False, "image_size": 64, "width": 16,
                     "folds": 3, "epochs": 1, "limit_series": 2, "max_slices": 6, "device": "cpu",
                     "progress": False}
    locators = [train_locator(LocatorConfig(sequence=seq, cache=str(small), run_dir=str(tmp_path / seq),
                                            **small_locator))
                for seq in rsna.SEQUENCES]
    out = tmp_path / "submission.csv"
    code, stdout, stderr = run_cli("predict", *trained_runs.values(), "--cache", small, "--out", out,
                                   "--allow-prior", "--device", "cpu",
                                   *(arg for run in locators for arg in ("--locators", run)))
    assert code == 0, stderr
    submission = pd.read_csv(out)
    metrics.check_submission(submission)
    assert len(submission) == 25 * 3
    folder = tmp_path / "submission.csv.located"
    (points_path,) = folder.glob("coordinates-*.csv")
    (derived,) = folder.glob("cache-*.zarr")
    assert str(derived) in stdout
    points = pd.read_csv(points_path)
    points["condition"] = points["condition"].map(rsna.CONDITION_FROM_TITLE)
    points["level"] = points["level"].map(rsna.LEVEL_FROM_TITLE)
    columns = ["study_id", "series_id", "condition", "level", "instance_number", "x", "y"]
    for seq in rsna.SEQUENCES:
        crops = open_cache(derived).level_labels(seq)[columns]
        merged = crops.merge(points, on=columns[:5], suffixes=("", "_located"))
        assert len(merged) == len(crops) > 0
        assert np.allclose(merged[["x", "y"]].to_numpy(), merged[["x_located", "y_located"]].to_numpy())
    expanded = tmp_path / "expanded.csv"  # `--locators loc/*` as the shell expands it: the rest land in RUNS
    code, _, stderr = run_cli("predict", *trained_runs.values(), "--cache", small, "--out", expanded,
                              "--allow-prior", "--device", "cpu", "--locators", *locators)
    assert code == 0, stderr
    pd.testing.assert_frame_equal(pd.read_csv(expanded), submission)


def test_a_cache_that_does_not_fit_the_runs_is_refused_in_one_line(trained_runs, locator_runs, synth_data,
                                                                  make_cache, tmp_path, run_cli):
    """Runs record the settings of their training cache: predict, evaluate and locate refuse a cache of
    other images (here the side convention of axial crops, and the image size for a locator)."""
    unmirrored = make_cache(synth_data, canonical_side=False)
    small = make_cache(synth_data, limit_studies=3, size=32)
    runs = list(trained_runs.values())
    cases = {
        "canonical side off, not on": [
            ("predict", *runs, "--cache", unmirrored, "--out", tmp_path / "s.csv"),
            ("predict", *runs, "--cache", unmirrored, "--locators", tmp_path / "unread", "--out",
             tmp_path / "s.csv"),  # refused before locating (an unread locator run would fail there)
            ("evaluate", *runs, "--cache", unmirrored, "--out", tmp_path / "report")],
        "32-pixel images, not 64": [
            ("predict", *runs, "--cache", small, "--out", tmp_path / "s.csv", "--allow-prior"),
            ("locate", locator_runs[0], "--cache", small, "--out", tmp_path / "points.csv"),
            ("evaluate", locator_runs[0], "--cache", small, "--out", tmp_path / "report")],
    }
    for message, commands in cases.items():
        for args in commands:
            code, _, stderr = run_cli(*args, "--device", "cpu")
            assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
            assert "does not fit run" in stderr and message in stderr, stderr
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "points.csv").exists()


def test_predict_with_locators_keeps_every_setting_of_the_cache(synth_data, make_cache, tmp_path, run_cli):
    """`predict --locators` on a --no-canonical-side cache gives the submission of the manual path: locate,
    ingest --coordinates ... --no-canonical-side, predict --cache (the derived cache once lost the setting,
    and its axial crops were mirrored)."""
    train_cache = make_cache(synth_data, canonical_side=False)
    runs = [train(TrainConfig(sequence=seq, cache=str(train_cache), run_dir=str(tmp_path / seq),
                              model="test_efficientnet", pretrained=False, epochs=1, batch_size=8, folds=3,
                              loader="torch", workers=1, device="cpu", progress=False))
            for seq in rsna.SEQUENCES]
    locator = train_locator(LocatorConfig(
        sequence="ax_t2", cache=str(train_cache), run_dir=str(tmp_path / "locator"),
        model="test_efficientnet", pretrained=False, image_size=64, width=16, folds=3, epochs=1,
        limit_series=2, max_slices=6, device="cpu", progress=False))
    test_cache = make_cache(synth_data, split="test", canonical_side=False)
    predict_args = ("--allow-prior", "--device", "cpu")
    code, _, stderr = run_cli("predict", *runs, "--cache", test_cache, "--out", tmp_path / "located.csv",
                              "--locators", locator, *predict_args)
    assert code == 0, stderr
    points, manual_cache = tmp_path / "points.csv", tmp_path / "manual.zarr"
    code, _, stderr = run_cli("locate", locator, "--cache", test_cache, "--out", points, "--device", "cpu")
    assert code == 0, stderr
    code, _, stderr = run_cli("ingest", synth_data, "--split", "test", "--out", manual_cache, "--size", 64,
                              "--coordinates", points, "--no-canonical-side", "--workers", 1, "--no-progress")
    assert code == 0, stderr
    code, _, stderr = run_cli("predict", *runs, "--cache", manual_cache, "--out", tmp_path / "manual.csv",
                              *predict_args)
    assert code == 0, stderr
    (derived,) = (tmp_path / "located.csv.located").glob("cache-*.zarr")
    assert not open_cache(derived).settings().images.canonical_side
    assert open_cache(derived).level_labels("ax_t2")["study_id"].nunique() == 3
    assert (tmp_path / "located.csv").read_text() == (tmp_path / "manual.csv").read_text()


def test_an_earlier_submission_in_any_csv_dialect_may_be_replaced(tmp_path):
    from lumbar_fast.predict import check_out

    header = ",".join(["row_id", *rsna.SUBMISSION_COLUMNS])
    quoted = ",".join(f'"{name}"' for name in ["row_id", *rsna.SUBMISSION_COLUMNS])
    for text in ("", header + "\n", "\ufeff" + header + "\r\n", quoted + "\n", "," + header + "\n",
                 header.replace(",", ", ") + "\n"):
        (tmp_path / "s.csv").write_text(text, encoding="utf-8")
        check_out(tmp_path / "s.csv")  # an empty file (mktemp), a BOM, quotes, pandas' index, spaces
    (tmp_path / "s.csv").write_text("study_id,x\n")
    with pytest.raises(LumbarFastError, match="is not a submission"):
        check_out(tmp_path / "s.csv")
