"""Level locator: coordinate round trips, heatmap decoding, augmentation geometry, metrics on perfect and
trivial predictions, a short training that beats the mean-position baseline, resume, locate → ingest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from lumbar_fast import rsna
from lumbar_fast.cache import open_cache
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders.series import augment, augment_params
from lumbar_fast.locator.config import LocatorConfig
from lumbar_fast.locator.decode import (
    SeriesPrediction,
    decode_heatmap,
    prediction_table,
    separate_levels,
    to_coordinates_csv,
)
from lumbar_fast.locator.locate import write_coordinates
from lumbar_fast.locator.losses import gaussian_heatmap, series_loss
from lumbar_fast.locator.metrics import (
    localisation_metrics,
    mean_position_predictions,
)
from lumbar_fast.locator.runs import is_locator_run, resume_locator, train_locator
from lumbar_fast.locator.targets import (
    SeriesTargets,
    fit_position_prior,
    load_data,
    series_of,
    to_normalised,
    to_original,
    window,
)
from lumbar_fast.models.locator import PRIOR_FLAT_STD_MM, PRIOR_MIN_STD_MM, Locator
from lumbar_fast.runfolder import RunFolder
from tests.crashes import killed_after_epochs, without_timings

SMALL = {"model": "test_efficientnet", "pretrained": False, "image_size": 64, "folds": 3, "device": "cpu",
         "progress": False, "width": 16}


def perfect_predictions(data) -> pd.DataFrame:
    """Prediction tables that place every labelled target exactly where its label is."""
    tables = []
    for series, target in zip(data.series, data.targets, strict=True):
        if target.present.any():
            keep = target.present
            prediction = SeriesPrediction(target.position[keep], target.uv[keep], np.ones(keep.sum()))
            names = [name for name, present in zip(data.names, keep, strict=True) if present]
            tables.append(prediction_table(series, prediction, data.stack_index, names))
    return pd.concat(tables, ignore_index=True)


@pytest.fixture(scope="module")
def sag_t1(synth_cache):
    return load_data(open_cache(synth_cache), "sag_t1")


# -- geometry and encoding -----------------------------------------------------------------------------------
def test_normalised_coordinates_round_trip_exactly():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 512, 100), rng.uniform(0, 384, 100)
    cols, rows = rng.integers(256, 513, 100), rng.integers(256, 513, 100)
    back_x, back_y = to_original(to_normalised(x, y, cols, rows), cols, rows)
    np.testing.assert_allclose(back_x, x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(back_y, y, rtol=0, atol=1e-9)


def test_series_are_ordered_stacks_with_edge_repeating_neighbours(synth_cache):
    cache = open_cache(synth_cache)
    index = cache.stack_index("ax_t2")
    multi_stack = 0
    for series in series_of(index):
        table = index.iloc[series.rows]
        assert (table["study_id"] == series.study_id).all() and (table["series_id"] == series.series_id).all()
        stack_positions = [table.iloc[segment]["position"].mean() for segment in series.stack_segments()]
        assert stack_positions == sorted(stack_positions)  # stacks in spatial order, whatever their ids
        multi_stack += len(stack_positions) > 1
        offset = table["position"].to_numpy() - series.offset_mm
        assert np.ptp(offset) < 1e-6 and series.offset_mm.min() == pytest.approx(-series.offset_mm.max())
        for segment in series.stack_segments():
            part = table.iloc[segment]
            assert part["stack"].nunique() == 1
            assert list(part["slice"]) == list(range(len(part)))  # every slice, in position order
            assert (np.diff(part["position"].to_numpy()) > 0).all()
            rows = series.rows[segment]
            assert series.prev_rows[segment][0] == rows[0] and series.next_rows[segment][-1] == rows[-1]
            np.testing.assert_array_equal(series.prev_rows[segment][1:], rows[:-1])
            np.testing.assert_array_equal(series.next_rows[segment][:-1], rows[1:])
    assert multi_stack, "the fixture should hold a multi-stack axial series"


def test_perfect_predictions_encode_back_to_the_labels_exactly(sag_t1):
    predictions = perfect_predictions(sag_t1)
    keys = ["study_id", "series_id", "condition", "level"]
    merged = predictions.merge(sag_t1.labels, on=keys, suffixes=("", "_label"))
    assert len(merged) == len(predictions) == len(sag_t1.labels.drop_duplicates(keys))
    np.testing.assert_array_equal(merged["instance_number"], merged["instance_number_label"])
    np.testing.assert_allclose(merged["x"], merged["x_label"], atol=1e-9)
    np.testing.assert_allclose(merged["y"], merged["y_label"], atol=1e-9)
    metrics = localisation_metrics(predictions, sag_t1.labels, sag_t1.stack_index)
    assert metrics["point_error_median_mm"] == pytest.approx(0, abs=1e-9)
    assert metrics["slice_exact"] == metrics["slice_within_1"] == metrics["level_name_accuracy"] == 1.0


def test_coordinates_csv_is_the_label_format(sag_t1, tmp_path):
    coordinates = to_coordinates_csv(perfect_predictions(sag_t1))
    path = tmp_path / "coordinates.csv"
    write_coordinates(coordinates, path)
    written = pd.read_csv(path)
    assert tuple(written.columns) == rsna.COORDINATE_COLUMNS
    assert set(written["condition"]) == {rsna.CONDITION_TITLES[c] for c in rsna.CONDITIONS[1:3]}
    assert set(written["level"]) <= set(rsna.LEVEL_TITLES.values())
    assert not written.duplicated(["study_id", "condition", "level"]).any()


def test_swapped_levels_are_counted_as_wrong_names(sag_t1):
    predictions = perfect_predictions(sag_t1)
    swap = {"l1_l2": "l2_l3", "l2_l3": "l1_l2"}
    swapped = predictions.assign(level=predictions["level"].map(lambda lv: swap.get(lv, lv)))
    metrics = localisation_metrics(swapped, sag_t1.labels, sag_t1.stack_index)
    keys = ["study_id", "series_id", "condition", "level"]
    scored = swapped.merge(sag_t1.labels[keys].drop_duplicates(), on=keys)  # points with a labelled twin
    assert metrics["points"] == len(scored)
    assert metrics["level_name_accuracy"] == pytest.approx(1 - scored["level"].isin(list(swap)).mean())


def test_heatmap_decoding_is_sub_cell_precise():
    points = torch.tensor([[0.3137, 0.7071], [0.5, 0.5], [0.05, 0.93]], dtype=torch.float64)
    target = gaussian_heatmap(points, 40, 40)
    decoded = decode_heatmap(target.log().reshape(3, 40, 40))
    np.testing.assert_allclose(decoded, points.numpy(), atol=1e-6)


def test_two_levels_on_one_disc_are_moved_apart():
    """L2/L3's heatmap peaks on L1/L2's disc (which is surer there), with its own disc second: it takes its
    own. The same condition's L3/L4 on a far slice, and another condition's L1/L2, may share that spot."""
    size, disc, own = 64, (0.5, 0.30), (0.5, 0.55)

    def heatmap(*peaks: tuple[float, tuple[float, float]]) -> torch.Tensor:
        mixture = sum(w * gaussian_heatmap(torch.tensor([p], dtype=torch.float64), size, size)
                      for w, p in peaks)
        return mixture.clamp_min(1e-30).log().reshape(size, size)

    levels = len(rsna.LEVELS)
    log_p = torch.stack([heatmap((1.0, (0.1 + 0.08 * k, 0.9))) for k in range(2 * levels)])  # apart
    log_p[0], log_p[2], log_p[levels] = heatmap((1.0, disc)), heatmap((1.0, disc)), heatmap((1.0, disc))
    log_p[1] = heatmap((0.6, disc), (0.4, own))
    position = np.zeros(2 * levels, dtype=int)
    position[2] = 5
    uv = separate_levels(log_p, position)
    np.testing.assert_allclose(uv[1], own, atol=0.005)
    np.testing.assert_allclose(uv[[0, 2, levels]], [disc] * 3, atol=0.005)
    np.testing.assert_allclose(uv[3:levels], decode_heatmap(log_p[3:levels]))  # nothing else moves


def test_levels_are_placed_jointly_not_greedily():
    """L4/L5 is surest on a spot L3/L4 also peaks at; L4/L5's own disc is its close second. Greedy (L4/L5
    first) would push L3/L4 to its weak second peak; the joint placement moves L4/L5 instead."""
    size = 64
    shared, l34_second, l45_second = (0.5, 0.50), (0.5, 0.40), (0.5, 0.63)

    def heatmap(*peaks: tuple[float, tuple[float, float]]) -> torch.Tensor:
        mixture = sum(w * gaussian_heatmap(torch.tensor([p], dtype=torch.float64), size, size)
                      for w, p in peaks)
        return mixture.clamp_min(1e-30).log().reshape(size, size)

    levels = len(rsna.LEVELS)
    log_p = torch.stack([heatmap((1.0, (0.5, 0.1 + 0.2 * k))) for k in range(levels)])  # L1/L2… apart
    log_p[2] = heatmap((0.88, shared), (0.12, l34_second))
    log_p[3] = heatmap((0.55, shared), (0.45, l45_second))
    log_p[3] += 0.5  # L4/L5's peak is the surest of the two
    log_p[[0, 1, 4]] = torch.stack([heatmap((1.0, (0.5, v))) for v in (0.12, 0.28, 0.85)])
    uv = separate_levels(log_p, np.zeros(levels, dtype=int))
    np.testing.assert_allclose(uv[2], shared, atol=0.005)
    np.testing.assert_allclose(uv[3], l45_second, atol=0.005)


def test_augmentation_moves_the_targets_with_the_image():
    image = torch.zeros(1, 3, 64, 64)
    uv = np.array([[0.3, 0.6]])
    row, col = int(uv[0, 1] * 64), int(uv[0, 0] * 64)
    image[..., row - 1:row + 2, col - 1:col + 2] = 1.0
    for item in range(5):
        params = {**augment_params(0, 0, item), "gamma": 1.0, "contrast": 1.0, "brightness": 0.0}
        moved, moved_uv = augment(image, uv, params)
        peak = np.unravel_index(int(moved[0, 1].argmax()), (64, 64))
        assert abs(peak[1] + 0.5 - moved_uv[0, 0] * 64) < 1.5
        assert abs(peak[0] + 0.5 - moved_uv[0, 1] * 64) < 1.5


def test_window_keeps_only_the_targets_inside(sag_t1):
    item = next(i for i, t in enumerate(sag_t1.targets) if t.present.all())
    series, target = sag_t1.series[item], sag_t1.targets[item]
    cut, cut_target = window(series, target, 2, 5)
    np.testing.assert_array_equal(cut.rows, series.rows[2:7])
    np.testing.assert_array_equal(cut.offset_mm, series.offset_mm[2:7])  # the whole series' centre
    inside = (target.position >= 2) & (target.position < 7)
    np.testing.assert_array_equal(cut_target.present, inside)
    np.testing.assert_array_equal(cut_target.position[inside], target.position[inside] - 2)


def test_a_point_moved_out_of_the_image_keeps_its_slice_target_but_no_heatmap_target():
    """The augmentation's shift, zoom and rotation can move a labelled point past the image's edge, where a
    Gaussian over the heatmap's cells would pile its mass onto the border."""
    torch.manual_seed(0)
    heatmaps, slice_logits = torch.randn(5, 3, 8, 8), torch.randn(5, 3)
    uv = np.array([[0.5, 0.5], [0.3, 0.6], [1.2, 0.5]])
    both = series_loss(heatmaps, slice_logits, SeriesTargets(np.array([1, 2, 3]), uv))
    two = series_loss(heatmaps, slice_logits, SeriesTargets(np.array([1, 2, -1]), uv))
    assert torch.allclose(both[0], two[0]) and not torch.allclose(both[1], two[1])
    gone = series_loss(heatmaps, slice_logits, SeriesTargets(np.array([-1, -1, 3]), uv))
    assert gone[0] == 0 and gone[1] > 0


# -- positional prior ----------------------------------------------------------------------------------------
def test_position_prior_puts_left_and_right_foramina_on_opposite_sides(sag_t1):
    mean, std = fit_position_prior(sag_t1.series, sag_t1.targets)
    side = np.array([condition.startswith("left") for condition, _ in sag_t1.names])
    assert (mean[side] * mean[~side].mean() < 0).all()  # mirror images: opposite signs of the offset
    assert abs(mean[side].mean() + mean[~side].mean()) < 0.3 * abs(mean[side].mean())
    assert (std >= PRIOR_MIN_STD_MM).all() and (std < 3 * PRIOR_MIN_STD_MM).all()


def test_target_without_labels_gets_a_flat_prior(sag_t1):
    unlabelled = [SeriesTargets(np.where(np.arange(len(t.position)) == 0, -1, t.position), t.uv)
                  for t in sag_t1.targets]
    mean, std = fit_position_prior(sag_t1.series, unlabelled)
    assert mean[0] == 0.0 and std[0] == PRIOR_FLAT_STD_MM and std[1] < PRIOR_FLAT_STD_MM


def test_prior_alone_chooses_the_slice_nearest_its_mean(sag_t1):
    """With image evidence that is the same on every slice, the slice head's choice is the prior's."""
    model = Locator("test_efficientnet", len(sag_t1.names), width=16).eval()
    torch.nn.init.zeros_(model.slice_score.weight)
    torch.nn.init.zeros_(model.slice_score.bias)
    mean, std = fit_position_prior(sag_t1.series, sag_t1.targets)
    model.set_position_prior(mean, std)
    series = sag_t1.series[0]
    channels = model.slice_embed[0].in_features
    with torch.no_grad():
        logits = model.score_slices(torch.ones(len(series), channels), series.layout(torch.device("cpu")))
    chosen = logits.argmax(dim=0).numpy()
    expected = np.abs(series.offset_mm[:, None] - mean[None, :]).argmin(axis=0)
    np.testing.assert_array_equal(chosen, expected)
    assert model.state_dict()["prior_mean"].tolist() == pytest.approx(mean.tolist())  # saved with the weights


# -- training ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ax_t2_run(synth_cache, tmp_path_factory):
    """An axial locator trained for a few epochs (about a minute on a quiet 2-core CPU) on the shared synth
    cache (64-pixel images). Axial, because at this size the sagittal locator does not yet beat the
    mean-position baseline of the phantom's well-centred sagittal stacks; it does on larger sets."""
    run_dir = tmp_path_factory.mktemp("locator") / "ax_t2"
    config = LocatorConfig(sequence="ax_t2", cache=str(synth_cache), run_dir=str(run_dir), epochs=8,
                           lr=3e-3, patience=8, max_slices=16, **SMALL)
    return train_locator(config)


def test_trained_locator_beats_the_mean_position_baseline(ax_t2_run):
    records = RunFolder.open_existing(ax_t2_run).read_metrics()
    best = min(records, key=lambda r: r["val_loss"])
    assert best["val_point_error_median_mm"] < 0.85 * best["baseline_point_error_median_mm"]
    assert records[-1]["train_loss"] < 0.8 * records[0]["train_loss"]
    for name in ("best.pt", "last.pt", "metrics.jsonl", "metrics.csv", "curves.png", "split.csv",
                 "val_predictions.csv", "config.json"):
        assert (ax_t2_run / name).is_file(), name


def test_mean_position_baseline_is_worse_than_perfect(sag_t1):
    items = list(range(len(sag_t1.series)))
    baseline = localisation_metrics(mean_position_predictions(sag_t1, items, items), sag_t1.labels,
                                        sag_t1.stack_index)
    assert baseline["point_error_median_mm"] > 1.0


def test_resume_after_a_kill_equals_an_uninterrupted_run(synth_cache, tmp_path):
    """train-locator SIGKILLs itself right after committing epoch 1; --resume it: the same weights and
    records as a run that was never interrupted."""
    options = {"sequence": "ax_t2", "cache": str(synth_cache), "epochs": 2, "limit_series": 2,
               "max_slices": 6, **SMALL}
    whole = train_locator(LocatorConfig(run_dir=str(tmp_path / "whole"), **options))
    killed = tmp_path / "killed"
    args = ["train-locator", "--sequence", "ax_t2", "--cache", str(synth_cache), "--run-dir", str(killed),
            "--model", SMALL["model"], "--no-pretrained", "--image-size", str(SMALL["image_size"]),
            "--width", str(SMALL["width"]), "--folds", str(SMALL["folds"]), "--epochs", "2",
            "--limit-series", "2", "--max-slices", "6", "--device", "cpu", "--no-progress"]
    killed_after_epochs(args, 1)
    assert RunFolder(killed).load_checkpoint("last.pt")["epoch"] == 1
    assert resume_locator(killed) == killed
    expected, got = RunFolder(whole).load_checkpoint("last.pt"), RunFolder(killed).load_checkpoint("last.pt")
    assert got["epoch"] == expected["epoch"] == 2
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key
    records = [without_timings(RunFolder(run).read_metrics()) for run in (killed, whole)]
    assert records[0] == records[1] and len(records[0]) == 2


def test_locate_writes_points_that_ingest_accepts(ax_t2_run, synth_data, synth_cache, make_cache, run_cli,
                                                  tmp_path):
    out = tmp_path / "coordinates.csv"
    code, _, stderr = run_cli("locate", ax_t2_run, "--cache", synth_cache, "--out", out, "--device", "cpu")
    assert code == 0, stderr
    located = pd.read_csv(out)
    studies = open_cache(synth_cache).stack_index("ax_t2")["study_id"].unique()
    assert set(located["study_id"]) == set(studies)
    assert (located.groupby("study_id").size() == 10).all()  # left and right at five levels per study
    test_cache = make_cache(synth_data, split="test")
    code, _, stderr = run_cli("locate", ax_t2_run, "--cache", test_cache, "--out", tmp_path / "test.csv",
                              "--device", "cpu")
    assert code == 0, stderr
    cache = open_cache(make_cache(synth_data, split="test", coordinates=tmp_path / "test.csv"))
    assert len(cache.level_labels("ax_t2")) == 10 * cache.stack_index("ax_t2")["study_id"].nunique()


def test_bad_input_is_one_line(ax_t2_run, synth_cache, tmp_path, run_cli):
    code, _, stderr = run_cli("train-locator", "--sequence", "sag_t2", "--cache", tmp_path / "nope",
                              "--out", tmp_path / "runs")
    assert code == 2 and stderr.startswith("error:") and len(stderr.strip().splitlines()) == 1
    code, _, stderr = run_cli("locate", tmp_path, "--cache", synth_cache, "--out", tmp_path / "x.csv")
    assert code == 2 and "not a run folder" in stderr
    code, _, stderr = run_cli("locate", ax_t2_run, ax_t2_run, "--cache", synth_cache, "--out",
                              tmp_path / "x.csv")
    assert code == 2 and "is given twice; give each once" in stderr, stderr
    code, _, stderr = run_cli("train", "--resume", ax_t2_run, "--device", "cpu")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "is a locator run" in stderr and "`train-locator --resume` locator runs" in stderr
    with pytest.raises(LumbarFastError, match="no feature maps|unknown model"):
        Locator("no_such_model", 5)


def test_a_locator_run_of_an_earlier_version_is_named_as_neither_run(ax_t2_run, synth_cache, tmp_path,
                                                                     run_cli):
    """A locator run whose config.json has no `kind` (written before it existed) is not taken for a
    classifier run either: evaluate says so in one line."""
    old = shutil.copytree(ax_t2_run, tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    del config["arguments"]["kind"]
    (old / "config.json").write_text(json.dumps(config))
    assert is_locator_run(ax_t2_run) and not is_locator_run(old)
    code, _, stderr = run_cli("evaluate", old, "--cache", synth_cache, "--out", tmp_path / "report")
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "not a classifier run" in stderr and "nor a locator run of this version" in stderr
    with pytest.raises(LumbarFastError, match="kind is 'locator', not 'classifier'"):
        LocatorConfig(sequence="ax_t2", cache=str(synth_cache), run_dir=str(tmp_path / "r"),
                      kind="classifier").check()


def test_train_locator_refuses_several_processes(synth_cache, tmp_path, monkeypatch, run_cli):
    """Under torchrun every rank would train the same locator run on its own: refused in one line before
    any file is written, for a new run and a resumed one."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for args in (["--sequence", "sag_t2", "--cache", synth_cache, "--run-dir", tmp_path / "r"],
                 ["--resume", tmp_path / "r"]):
        code, _, stderr = run_cli("train-locator", *args, "--device", "cpu")
        assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert "runs in one process, not 2" in stderr
    assert not (tmp_path / "r").exists()
