"""`predict --data`: a competition folder of DICOM test studies to a submission in one command, equal to the
multi-command path (ingest, predict --locators), with what it could not use named, and bad input refused."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from lumbar_fast import metrics, rsna
from lumbar_fast.cache import open_cache
from lumbar_fast.classifier.runs import read_runs
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.locator.config import LocatorConfig
from lumbar_fast.locator.runs import train_locator
from lumbar_fast.predict_folder import runs_image_settings


def submission(path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    metrics.check_submission(frame)
    return frame


def test_one_command_gives_the_submission_of_the_multi_command_path(trained_runs, locator_runs, synth_data,
                                                                   make_cache, tmp_path, run_cli):
    runs, locator = list(trained_runs.values()), locator_runs[0]
    common = ("--locators", locator, "--allow-prior", "--device", "cpu")
    test_cache = make_cache(synth_data, split="test")  # the runs' image settings, stacks only
    code, _, stderr = run_cli("predict", *runs, "--cache", test_cache, "--out", tmp_path / "steps.csv",
                              *common)
    assert code == 0, stderr
    out = tmp_path / "one" / "submission.csv"
    code, stdout, stderr = run_cli("predict", *runs, "--data", synth_data, "--out", out, "--workers", 2,
                                   "--no-progress", *common)
    assert code == 0, stderr
    steps, one = submission(tmp_path / "steps.csv"), submission(out)
    assert one["row_id"].tolist() == steps["row_id"].tolist()
    assert len(one) == 25 * 3
    columns = list(rsna.SUBMISSION_COLUMNS)
    assert np.allclose(one[columns].to_numpy(), steps[columns].to_numpy(), rtol=0, atol=1e-6)
    for stage in ("ingest stacks", "locate", "ingest crops", "classify", "studies/s", "torch loader"):
        assert stage in stdout, stdout
    assert os.listdir(out.parent) == ["submission.csv"]  # the work folder went with the run


@pytest.fixture(scope="module")
def every_locator(synth_cache, tmp_path_factory) -> list:
    """A tiny locator run for each sequence (one epoch of 2 series at 64 px, CPU)."""
    folder = tmp_path_factory.mktemp("locators")
    return [train_locator(LocatorConfig(
        sequence=seq, cache=str(synth_cache), run_dir=str(folder / seq), model="test_efficientnet",
        pretrained=False, image_size=64, width=16, folds=3, epochs=1, limit_series=2, max_slices=6,
        device="cpu", progress=False)) for seq in rsna.SEQUENCES]


def copy_without(synth_data, data, series) -> pd.DataFrame:
    """`synth_data` linked into `data`, its test_series_descriptions.csv without the rows `series` picks
    (a function of the frame); the descriptions before the cut."""
    shutil.copytree(synth_data, data, copy_function=os.link)
    descriptions = pd.read_csv(data / "test_series_descriptions.csv")
    (data / "test_series_descriptions.csv").unlink()  # a new file: the linked one is synth_data's
    descriptions[~series(descriptions)].to_csv(data / "test_series_descriptions.csv", index=False)
    return descriptions


def test_a_damaged_folder_still_gives_every_row_and_names_what_it_could_not_use(trained_runs, every_locator,
                                                                               synth_data, tmp_path, run_cli):
    """One study lacks its Sagittal T2 series and another has a damaged file: without --allow-prior the
    missing series type is refused (before locating; nothing is left behind); with it every study still gets
    its 25 rows, and the summary says what was missing."""
    data = tmp_path / "data"
    studies = sorted(pd.read_csv(synth_data / "test_series_descriptions.csv")["study_id"].unique())
    copy_without(synth_data, data, lambda d: (d["study_id"] == studies[0])
                 & (d["series_description"] == "Sagittal T2/STIR"))
    damaged = sorted((data / "test_images" / str(studies[1])).rglob("*.dcm"))[0]
    damaged.unlink()
    damaged.write_bytes(b"not a DICOM file")
    out = tmp_path / "submission.csv"
    args = ("predict", *trained_runs.values(), "--data", data, "--out", out, "--device", "cpu",
            "--workers", 1, "--no-progress", *(arg for run in every_locator for arg in ("--locators", run)))
    code, _, stderr = run_cli(*args)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert f"(first: study {studies[0]}: no Sagittal T2/STIR series); pass --allow-prior" in stderr, stderr
    assert sorted(os.listdir(tmp_path)) == ["data"]  # no CSV, no temporary work folder
    code, stdout, stderr = run_cli(*args, "--allow-prior", "--keep")
    assert code == 0, stderr
    assert len(submission(out)) == 25 * len(studies)
    assert "could not use 2:" in stdout and "hold the best constant prediction" in stdout, stdout
    assert f"study {studies[0]}: no Sagittal T2/STIR series" in stdout
    assert f"{damaged}: not a DICOM file" in stdout
    work = tmp_path / "submission.csv.work"
    (crops,) = work.glob("cache-*.zarr")  # named by its settings and points
    assert f"work folder kept: {work}" in stdout and open_cache(crops).sequences()
    shutil.copy(synth_data / "test_series_descriptions.csv", data)  # the series back: new caches, not refused
    code, stdout, stderr = run_cli(*args, "--keep")
    assert code == 0 and "could not use 1:" in stdout, stderr + stdout
    assert len(list(work.glob("cache-*.zarr"))) == 2


def test_a_series_type_no_study_has_takes_the_prior(trained_runs, every_locator, synth_data, tmp_path,
                                                    run_cli):
    """No study has an Axial T2 series: with --allow-prior every subarticular row holds the best constant
    prediction of the ax_t2 runs' prior, and the other rows are predicted."""
    data = tmp_path / "data"
    descriptions = copy_without(synth_data, data, lambda d: d["series_description"] == "Axial T2")
    out = tmp_path / "submission.csv"
    code, stdout, stderr = run_cli(
        "predict", *trained_runs.values(), "--data", data, "--out", out, "--device", "cpu", "--workers", 1,
        "--no-progress", "--allow-prior", *(arg for run in every_locator for arg in ("--locators", run)))
    assert code == 0, stderr
    rows = submission(out)
    assert len(rows) == 25 * descriptions["study_id"].nunique()
    subarticular = rows["row_id"].str.contains("subarticular")
    (ax_t2,) = (run for run in read_runs(list(trained_runs.values())) if run.sequence == "ax_t2")
    columns = list(rsna.SUBMISSION_COLUMNS)
    assert np.allclose(rows.loc[subarticular, columns], metrics.metric_optimal(ax_t2.prior), atol=1e-6)
    assert not np.allclose(rows.loc[~subarticular, columns].std(), 0)  # the sagittal rows were classified
    assert "runs: sag_t1 ×1, sag_t2 ×1;" in stdout and "no Axial T2 series" in stdout, stdout


def test_bad_input_is_one_line(trained_runs, locator_runs, synth_data, tmp_path, run_cli):
    runs = list(trained_runs.values())
    out = tmp_path / "s.csv"
    empty = tmp_path / "empty"  # the CSV lists series, test_images/ holds none
    (empty / "test_images").mkdir(parents=True)
    shutil.copy(synth_data / "test_series_descriptions.csv", empty)
    cases = {
        ("--data", empty, "--locators", locator_runs[0], "--allow-prior"): "could be used (first: "
                                                                          f"{empty / 'test_images'}/",
        ("--data", tmp_path / "nowhere", "--locators", locator_runs[0]): "is not a folder",
        ("--data", tmp_path, "--locators", locator_runs[0]): "has no test_images",
        ("--data", synth_data): "--data needs --locators",
        ("--data", synth_data, "--locators", locator_runs[0]): "no locator run for sag_t1, ax_t2",
        ("--data", synth_data, "--cache", tmp_path / "c.zarr"): "exactly one of --cache and --data",
        (): "exactly one of --cache and --data",
    }
    for extra, message in cases.items():
        code, _, stderr = run_cli("predict", *runs, "--out", out, "--device", "cpu", *extra)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, (extra, stderr)
    assert not out.exists() and os.listdir(tmp_path) == ["empty"]


def test_runs_trained_on_caches_of_other_images_are_refused_before_any_work(trained_runs):
    """--data ingests one crops cache with the runs' image settings: runs that differ cannot share it."""
    runs = read_runs(list(trained_runs.values()))
    assert runs_image_settings(runs) == runs[0].settings
    other = dataclasses.replace(runs[1], settings=dataclasses.replace(runs[1].settings, size=32))
    with pytest.raises(LumbarFastError, match="trained on caches of different images"):
        runs_image_settings([runs[0], other, runs[2]])
