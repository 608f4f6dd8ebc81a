"""ingest on phantom folders: spatial order, crops centred on their labelled point, compressed twins, damaged
files reported but not fatal, SIGKILL-and-resume equal to an uninterrupted run, reruns, HDF5, the test split,
one-line errors for bad input, and `info` telling the truth."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import zarr
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000Lossless, RLELossless

from lumbar_fast import cache, dicom, rsna
from lumbar_fast.cache import ImageSettings, IngestSettings
from lumbar_fast.errors import CacheError, DataError, WorkerError
from lumbar_fast.ingest import (
    convert_series,
    ingest,
    plan_ingest,
)
from lumbar_fast.phantom import MANIFEST_NAME, PitfallRates
from lumbar_fast.testhooks import INGEST_KILL_AFTER_ENV
from tests.cache_compare import assert_same_content
from tests.crops import recut_similarity


@pytest.fixture(scope="module")
def tiny_data(make_synth) -> Path:
    """3 train + 1 test studies of 64-pixel images, one damaged file per study."""
    return make_synth(3, 1, seed=5, image_size=64, pitfalls=PitfallRates().with_rates(corrupt=1.0))


def manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST_NAME).read_text())


def assert_same_cache(a: cache.CacheReader, b: cache.CacheReader) -> None:
    """Same arrays, same tables, same parameters (but the format) and source summary."""
    assert_same_content(a, b)
    pd.testing.assert_frame_equal(a.errors(), b.errors())
    assert {**a.attrs["params"], "fmt": ""} == {**b.attrs["params"], "fmt": ""}
    assert (a.attrs["split"], a.attrs["source"]) == (b.attrs["split"], b.attrs["source"])


# --- geometry and content ---------------------------------------------------------------------------------

def test_stacks_are_in_spatial_order_whatever_the_instance_numbers(synth_data, synth_cache):
    reader = cache.open_cache(synth_cache)
    series = {s["series_id"]: s for s in manifest(synth_data)["series"] if s["split"] == "train"}
    shuffled = 0
    for seq in reader.sequences():
        index = reader.stack_index(seq)
        for (series_id, stack), rows in index.groupby(["series_id", "stack"]):
            assert rows["slice"].tolist() == list(range(len(rows)))
            assert np.all(np.diff(rows["position"]) > 0), (series_id, stack)
            steps = np.diff(rows["instance_number"])
            shuffled += not (np.all(steps > 0) or np.all(steps < 0))  # neither way round
            for row in rows.iloc[[0, -1]].itertuples():  # positions recomputed from the headers
                path = synth_data / "train_images" / str(row.study_id) / str(series_id) / \
                    f"{row.instance_number}.dcm"
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                iop = np.array(ds.ImageOrientationPatient, float)
                normal = np.cross(iop[:3], iop[3:])
                normal *= np.sign(normal[np.argmax(np.abs(normal))])  # pointing to left, back or head
                assert row.position == pytest.approx(float(np.array(ds.ImagePositionPatient, float) @ normal))
                assert (row.rows, row.cols) == (ds.Rows, ds.Columns)
        for series_id, rows in index.groupby("series_id"):
            assert rows["stack"].nunique() == series[series_id]["stacks"]
    assert shuffled >= 1 and "multi_stack" in manifest(synth_data)["pitfalls"]


def test_level_crops_are_centred_on_their_labelled_point_on_the_labelled_slice(synth_data, synth_cache):
    reader = cache.open_cache(synth_cache)
    coordinates = pd.read_csv(synth_data / "train_label_coordinates.csv")
    size = reader.attrs["params"]["size"]
    for seq in reader.sequences():
        labels, images = reader.level_labels(seq), reader.level_images(seq).astype(np.float64)
        index = reader.stack_index(seq).iloc[labels["stack_row"]]
        for column in ("study_id", "series_id", "instance_number"):
            assert (index[column].to_numpy() == labels[column].to_numpy()).all()
        wanted = coordinates[coordinates["condition"].map(rsna.CONDITION_FROM_TITLE).isin(
            rsna.SEQUENCES[seq].conditions)]
        assert len(labels) == len(wanted)  # the phantom never labels a damaged file
        # the phantom darkens the labelled structure with severity, inside a few mm of its point
        radius = 2.5 / reader.attrs["params"]["crop_mm"][seq] * size
        rows, cols = np.mgrid[:size, :size]
        centre = (rows - (size - 1) / 2) ** 2 + (cols - (size - 1) / 2) ** 2 <= radius ** 2
        middle = images[..., images.shape[-1] // 2]
        here = middle[:, centre].mean(axis=1) / np.percentile(middle, 99.5, axis=(1, 2))
        severity = labels["severity"].to_numpy()
        means = [here[severity == k].mean() for k in (0, 1, 2)]
        assert means[0] > means[1] > means[2], (seq, means)
        assert np.corrcoef(severity[severity >= 0], here[severity >= 0])[0, 1] < -0.7, seq


def test_the_middle_channel_is_cut_from_the_labelled_instance_file(synth_data, synth_cache):
    reader = cache.open_cache(synth_cache)
    for seq in reader.sequences():
        labels, images, index = reader.level_labels(seq), reader.level_images(seq), reader.stack_index(seq)
        width = reader.attrs["params"]["crop_mm"][seq]
        for row in labels.iloc[::7].itertuples():
            folder = synth_data / "train_images" / str(row.study_id) / str(row.series_id)
            neighbour = index["instance_number"].iloc[row.stack_row + (1 if row.slice == 0 else -1)]
            stored = images[row.Index, ..., images.shape[-1] // 2]
            here = recut_similarity(stored, folder / f"{row.instance_number}.dcm", row.x, row.y, width,
                                    row.condition)
            beside = recut_similarity(stored, folder / f"{neighbour}.dcm", row.x, row.y, width, row.condition)
            assert here > 0.99 and here > beside, (seq, row.Index, here, beside)


def test_compressed_twins_give_the_same_arrays(tiny_data, tmp_path):
    params = IngestSettings(data_dir=str(tiny_data), images=ImageSettings(size=32))
    plan = plan_ingest(params)
    damaged = {d["series_id"] for d in manifest(tiny_data)["damaged_files"]}
    uncompressed = {s["series_id"] for s in manifest(tiny_data)["series"]
                    if s["transfer_syntax"] == "explicit_little" and s["series_id"] not in damaged}
    task = next(t for t in plan.tasks if t.series_id in uncompressed and t.labels)
    reference = convert_series(task, params)
    for syntax in (RLELossless, JPEG2000Lossless):
        twin = tmp_path / syntax.name.replace(" ", "_")
        twin.mkdir()
        for path in task.folder.glob("*.dcm"):
            ds = pydicom.dcmread(path)
            ds.compress(syntax)
            ds.save_as(twin / path.name)
        part = convert_series(dataclasses.replace(task, folder=twin), params)
        np.testing.assert_array_equal(part.stack_images, reference.stack_images)
        np.testing.assert_array_equal(part.level_images, reference.level_images)
        pd.testing.assert_frame_equal(part.level_labels, reference.level_labels)


def test_damaged_files_are_reported_and_the_rest_is_ingested(synth_data, synth_cache):
    reader = cache.open_cache(synth_cache)
    damaged = [d for d in manifest(synth_data)["damaged_files"] if d["path"].startswith("train_images")]
    assert damaged
    errors = reader.errors()
    assert sorted(Path(p).relative_to(synth_data).as_posix() for p in errors["path"]) == \
        sorted(d["path"] for d in damaged)
    assert set(cache.reason_counts(errors)) <= {
        "not a DICOM file", "not a readable DICOM file", "pixel data cannot be decoded",
        "pixel data does not match the header", "no pixel data (not an image, or cut short)"}
    files = {seq: 0 for seq in rsna.SEQUENCES}
    descriptions = pd.read_csv(synth_data / "train_series_descriptions.csv")
    for row in descriptions.itertuples():
        folder = synth_data / "train_images" / str(row.study_id) / str(row.series_id)
        files[rsna.sequence_of_description(row.series_description)] += len(list(folder.glob("*.dcm")))
    ingested = {seq: len(reader.stack_index(seq)) for seq in reader.sequences()}
    assert sum(files.values()) - sum(ingested.values()) == len(damaged)


def test_study_labels_are_train_csv_as_class_ids(synth_data, synth_cache):
    labels = cache.open_cache(synth_cache).study_labels().set_index("study_id")
    train = pd.read_csv(synth_data / "train.csv").set_index("study_id")
    assert sorted(labels.index) == sorted(train.index)
    expected = train.apply(lambda column: column.map(rsna.SEVERITY_FROM_NAME)).fillna(rsna.MISSING)
    assert (labels.loc[train.index, list(rsna.LABEL_COLUMNS)].to_numpy() == expected.to_numpy()).all()
    assert (labels.to_numpy() == rsna.MISSING).any()  # the phantom leaves some labels out


# --- broken inputs ----------------------------------------------------------------------------------------

def broken_copy(tiny_data: Path, tmp_path: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A copy of tiny_data with one of each problem; returns it and the (study, series) of each."""
    root = tmp_path / "broken"
    shutil.copytree(tiny_data, root)
    descriptions = pd.read_csv(root / "train_series_descriptions.csv")
    coordinates = pd.read_csv(root / "train_label_coordinates.csv")
    keys = list(descriptions[["study_id", "series_id"]].itertuples(index=False, name=None))
    folder = {key: root / "train_images" / str(key[0]) / str(key[1]) for key in keys}
    where = {"labelled truncated": keys[0], "empty": keys[1], "unknown description": keys[2],
             "folder missing": keys[3], "non-image": keys[4], "label without file": keys[5]}
    labelled = coordinates[coordinates["series_id"] == keys[0][1]].iloc[0]
    victim = folder[keys[0]] / f"{labelled.instance_number}.dcm"
    victim.write_bytes(victim.read_bytes()[:700])
    for path in folder[keys[1]].glob("*.dcm"):
        path.unlink()
    descriptions.loc[2, "series_description"] = "Coronal T1"
    shutil.rmtree(folder[keys[3]])
    shutil.copy(get_testdata_file("rtplan.dcm", download=False), folder[keys[4]] / "9999.dcm")
    extra = coordinates[coordinates["series_id"] == keys[5][1]].iloc[[0]].assign(instance_number=4242)
    pd.concat([coordinates, extra]).to_csv(root / "train_label_coordinates.csv", index=False)
    descriptions.to_csv(root / "train_series_descriptions.csv", index=False)
    return root, where


def test_broken_inputs_go_to_the_errors_table_and_the_rest_is_ingested(tiny_data, tmp_path):
    root, where = broken_copy(tiny_data, tmp_path)
    summary = ingest(root, tmp_path / "c.zarr", size=32, workers=1, progress=False)
    errors = cache.open_cache(tmp_path / "c.zarr").errors()
    assert summary.errors == len(errors)
    found = {(r.study_id, r.series_id, r.reason.split(":")[0]) for r in errors.itertuples()}
    reasons = {"labelled truncated": "labelled instance missing or unusable", "empty": "empty series",
               "unknown description": "unknown series description", "folder missing": "series folder missing",
               "non-image": "no pixel data (not an image, or cut short)",
               "label without file": "labelled instance missing or unusable"}
    for problem, reason in reasons.items():
        assert (*where[problem], reason) in found, problem
    reader = cache.open_cache(tmp_path / "c.zarr")
    ingested = {sid for seq in reader.sequences() for sid in reader.stack_index(seq)["series_id"]}
    gone = {where[p][1] for p in ("empty", "unknown description", "folder missing")}
    assert not ingested & gone and len(ingested) == summary.series - 1  # the empty series has no image


def edit_pixel_data(path: Path, edit) -> None:
    """Rewrite a DICOM file with `edit(PixelData)` as its pixel data (a new file: copies may share inodes)."""
    ds = pydicom.dcmread(path)
    ds.PixelData = edit(ds.PixelData)
    path.unlink()
    ds.save_as(path)


def test_zero_padded_pixel_data_ingests_like_its_twin_and_lost_rows_or_short_data_are_reported(
        tiny_data, make_cache, tmp_path):
    """Zero bytes beyond one frame are padding (a whole frame's worth, which pydicom would read as a second
    frame); data beyond it (a header that lost rows) or too little data are error rows."""
    root = tmp_path / "padded"
    shutil.copytree(tiny_data, root)
    native = [s for s in manifest(root)["series"]
              if s["split"] == "train" and s["transfer_syntax"] == "explicit_little" and s["labelled"]]
    padded, lost_rows, short = (root / "train_images" / str(s["study_id"]) / str(s["series_id"])
                                for s in native[:3])
    for path in padded.glob("*.dcm"):
        edit_pixel_data(path, lambda data: data + bytes(len(data)))
    damaged = {d["path"] for d in manifest(root)["damaged_files"]}
    victims = [next(p for p in sorted(folder.glob("*.dcm")) if p.relative_to(root).as_posix() not in damaged
                    and pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber != 1)
               for folder in (lost_rows, short)]
    edit_pixel_data(victims[0], lambda data: data + data[: 2 * len(data) // pydicom.dcmread(victims[0]).Rows])
    edit_pixel_data(victims[1], lambda data: data[:-2])
    ingest(root, tmp_path / "c.zarr", size=32, workers=1, progress=False)
    edited, clean = cache.open_cache(tmp_path / "c.zarr"), cache.open_cache(make_cache(tiny_data, size=32,
                                                                                        workers=1))
    series_id = int(padded.name)
    for seq in clean.sequences():
        rows = {name: reader.stack_index(seq)["series_id"].to_numpy() == series_id
                for name, reader in (("edited", edited), ("clean", clean))}
        np.testing.assert_array_equal(edited.stack_images(seq)[rows["edited"]],
                                      clean.stack_images(seq)[rows["clean"]])
    reasons = {Path(r.path).resolve(): r.reason for r in edited.errors().itertuples()}
    assert reasons[victims[0].resolve()].endswith("are not zero padding")
    assert reasons[victims[1].resolve()].startswith("pixel data does not match the header: ")
    assert int(padded.name) not in set(edited.errors()["series_id"].dropna().astype(int))


def test_a_series_that_fails_as_a_whole_is_one_error_row(tiny_data, monkeypatch):
    """An exception no check foresaw, while converting a series, is that series' problem alone."""
    params = IngestSettings(data_dir=str(tiny_data), images=ImageSettings(size=32))
    task = plan_ingest(params).tasks[0]

    def broken(slices):
        raise RuntimeError("boom\nand more lines")
    monkeypatch.setattr(dicom, "series_window", broken)
    part = convert_series(task, params)
    assert part.errors[["path", "reason"]].values.tolist() == \
        [[str(task.folder), "series cannot be converted: RuntimeError: boom"]]
    assert len(part.stack_images) == len(part.level_images) == len(part.stack_index) == 0
    assert part.stack_images.shape[1:] == (32, 32)


def overflowing_rle(ds: pydicom.Dataset) -> bytes:
    """`ds`'s pixel data as one RLE frame whose first segment replicates far more bytes than Rows × Columns:
    the Rust decoder (pylibjpeg-rle) panics on it instead of raising."""
    ds.compress(RLELossless)
    frame = bytearray(get_frame(ds.PixelData, 0, number_of_frames=1))
    start, end = (int(offset) for offset in np.frombuffer(bytes(frame[4:12]), "<u4"))
    frame[start:end] = bytes([0x81, 0x07]) * ((end - start) // 2) + bytes((end - start) % 2)
    return encapsulate([bytes(frame)])


def test_a_decoder_panic_is_that_files_error_row_with_several_workers(tiny_data, tmp_path):
    """pyo3's PanicException is a BaseException: it used to kill a pool worker, and ingest waited forever."""
    root = tmp_path / "panic"
    shutil.copytree(tiny_data, root, copy_function=os.link)
    damaged = {d["path"] for d in manifest(root)["damaged_files"]}
    victim = next(p for p in sorted((root / "train_images").glob("*/*/*.dcm"))
                  if p.relative_to(root).as_posix() not in damaged)
    ds = pydicom.dcmread(victim)
    ds.PixelData = overflowing_rle(ds)
    victim.unlink()
    ds.save_as(victim)
    ingest(root, tmp_path / "c.zarr", size=32, workers=2, progress=False)
    errors = cache.open_cache(tmp_path / "c.zarr").errors()
    reasons = {Path(r.path).resolve(): r.reason for r in errors.itertuples()}
    assert reasons[victim.resolve()].startswith("pixel data cannot be decoded: PanicException: ")


def test_a_worker_process_that_dies_is_a_one_line_error_not_a_hang():
    """A worker killed by the system (out of memory) or crashed in native code ends ingest: WorkerError."""
    from lumbar_fast.ingest import _map

    with pytest.raises(WorkerError, match="worker process died"):
        list(_map(os._exit, [3, 3, 3], 2, lambda task: True))


@pytest.mark.parametrize("make_args, message", [
    (lambda tmp, data: [str(tmp / "nowhere")], "does not exist"),
    (lambda tmp, data: [str(tmp)], "train_series_descriptions.csv does not exist"),
    (lambda tmp, data: [str(data), "--split", "test", "--coordinates", str(tmp / "none.csv")], "none.csv"),
    (lambda tmp, data: [str(data), "--out", str(tmp / "occupied")], "not a lumbar-fast cache"),
    (lambda tmp, data: [str(data), "--out", str(tmp / "occupied" / "keep.txt" / "c")], "Not a directory"),
])
def test_bad_input_is_a_one_line_error(tiny_data, tmp_path, run_cli, make_args, message):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "keep.txt").write_text("mine")
    args = make_args(tmp_path, tiny_data)
    if "--out" not in args:
        args += ["--out", str(tmp_path / "c.zarr")]
    code, _, err = run_cli("ingest", *args, "--no-progress")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "occupied" / "keep.txt").read_text() == "mine"


def edited_csv(data: Path, tmp_path: Path, name: str, edit) -> Path:
    """A copy of `data` (its images linked) whose CSV `name` is `edit(table)` (a DataFrame, text or bytes)."""
    root = tmp_path / "edited"
    shutil.copytree(data, root, copy_function=os.link)
    (root / name).unlink()
    table = pd.read_csv(data / name, dtype=str, keep_default_na=False)
    edited = edit(table)
    if isinstance(edited, bytes | str):
        (root / name).write_bytes(edited if isinstance(edited, bytes) else edited.encode())
    else:
        edited.to_csv(root / name, index=False)
    return root


def set_row0(column: str, value: str):
    def edit(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[0, column] = value
        return table
    return edit


@pytest.mark.parametrize("name, edit, message", [
    ("train_series_descriptions.csv", lambda t: t.drop(columns="series_description"),
     "train_series_descriptions.csv lacks the column(s) series_description"),
    ("train_series_descriptions.csv", set_row0("series_id", "abc"),
     "column series_id, row 1: 'abc' is not an integer"),
    ("train_series_descriptions.csv", lambda t: "", "is not a readable CSV (EmptyDataError"),
    ("train.csv", lambda t: pd.concat([t, t.iloc[[0]]]), "row 4: study"),
    ("train.csv", set_row0("spinal_canal_stenosis_l1_l2", "Awful"), "row 1: unknown severity 'Awful'"),
    ("train.csv", lambda t: t.iloc[:0], "lists no study (a header alone)"),
    ("train_label_coordinates.csv", set_row0("instance_number", ""),
     "instance_number, row 1: empty, needs an integer"),
    ("train_label_coordinates.csv", set_row0("x", "left"), "column x, row 1: 'left' is not a number"),
    ("train_label_coordinates.csv", lambda t: b"\xff\xfe\x00binary\n", "is not a readable CSV"),
])
def test_a_malformed_csv_is_a_one_line_error_and_nothing_is_written(tiny_data, tmp_path, run_cli, name, edit,
                                                                     message):
    root = edited_csv(tiny_data, tmp_path, name, edit)
    out = tmp_path / "c.zarr"
    code, _, err = run_cli("ingest", str(root), "--out", str(out), "--no-progress")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert name in err and not out.exists() and not out.with_name("c.zarr.ingest").exists()


def test_csv_row_problems_are_error_rows_and_the_rest_is_ingested(tiny_data, make_cache, tmp_path):
    """Repeated series and coordinate rows, points that are NaN or off their image, and labels or points
    of a study without images: error rows, each; what can be used is, once."""
    root = tmp_path / "rows"
    shutil.copytree(tiny_data, root, copy_function=os.link)
    for name in ("train_series_descriptions.csv", "train_label_coordinates.csv", "train.csv"):
        (root / name).unlink()
    descriptions = pd.read_csv(tiny_data / "train_series_descriptions.csv")
    coordinates = pd.read_csv(tiny_data / "train_label_coordinates.csv")
    labels = pd.read_csv(tiny_data / "train.csv")
    twice, conflict = descriptions.iloc[0], descriptions.iloc[1]
    pd.concat([descriptions, descriptions.iloc[[0]], descriptions.iloc[[1]].assign(
        series_description="Coronal T1")]).to_csv(root / "train_series_descriptions.csv", index=False)
    labelled = coordinates[coordinates["series_id"] == twice.series_id].index
    coordinates.loc[labelled[1], "x"] = float("nan")
    coordinates.loc[labelled[2], "y"] = 10_000.0
    stray = coordinates[coordinates["series_id"] == coordinates["series_id"].iloc[0]].iloc[:2].assign(
        study_id=999_999)  # two points of one series no description lists
    pd.concat([coordinates, coordinates.iloc[[labelled[0]]], stray]).to_csv(
        root / "train_label_coordinates.csv", index=False)
    pd.concat([labels, labels.iloc[[0]].assign(study_id=999_999)]).to_csv(root / "train.csv", index=False)

    reader = cache.open_cache(ingest(root, tmp_path / "c.zarr", size=32, workers=1, progress=False).out)
    reasons = {(r.study_id, r.reason.split(":")[0]) for r in reader.errors().itertuples()}
    assert {(twice.study_id, "series listed 2 times in the series descriptions"),
            (conflict.study_id, "series listed 2 times in the series descriptions"),
            (twice.study_id, "coordinate row listed 2 times"),
            (twice.study_id, "labelled point is not finite"),
            (twice.study_id, "labelled point outside its image"),
            (999_999, "labelled series not listed in the series descriptions"),
            (999_999, "labelled study not listed in the series descriptions")} <= reasons
    clean = cache.open_cache(make_cache(tiny_data, size=32, workers=1))
    ingested = pd.concat([reader.stack_index(seq) for seq in reader.sequences()])
    assert conflict.series_id not in set(ingested["series_id"])
    assert (ingested["series_id"] == twice.series_id).sum() == sum(
        (clean.stack_index(seq)["series_id"] == twice.series_id).sum() for seq in clean.sequences())
    crops = pd.concat([reader.level_labels(seq) for seq in reader.sequences()])
    assert (crops["series_id"] == twice.series_id).sum() == len(labelled) - 2
    assert 999_999 not in set(reader.study_labels()["study_id"])
    assert reader.errors()["reason"].tolist().count(
        "labelled series not listed in the series descriptions: 2 coordinate row(s)") == 1  # one per series


def test_an_empty_descriptions_csv_is_a_data_error(tiny_data, tmp_path):
    root = tmp_path / "empty"
    (root / "train_images").mkdir(parents=True)
    (root / "train_series_descriptions.csv").write_text("study_id,series_id,series_description\n")
    with pytest.raises(DataError, match="lists no series"):
        ingest(root, tmp_path / "c.zarr", progress=False)


# --- resuming, reruns, formats, splits --------------------------------------------------------------------

def killed_ingest(data: Path, out: Path, series: int, fmt: str) -> int:
    """Run `lumbar-fast ingest` in a session of its own until it SIGKILLs itself after appending `series`
    series (testhooks.INGEST_KILL_AFTER_ENV), then kill the workers it left; returns its exit status."""
    command = [sys.executable, "-m", "lumbar_fast", "ingest", str(data), "--out", str(out), "--size", "32",
               "--workers", "2", "--format", fmt, "--no-progress"]
    process = subprocess.Popen(command, env={**os.environ, INGEST_KILL_AFTER_ENV: str(series)},
                               start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = process.wait(timeout=120)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    return status


def assert_same_files(a: Path, b: Path) -> None:
    """Two Zarr stores with the same files, byte for byte, but the root attributes (which hold a cache_id)."""
    files = {path: sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()) for path in (a, b)}
    assert files[a] == files[b]
    for name in files[a]:
        if name != Path("zarr.json"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.fixture(scope="module")
def resume_data(make_synth) -> Path:
    """8 studies of 64-pixel images, one damaged file per study: enough series for the store to record some
    (a record needs a sequence's chunk of 32 images written) before the ingest is killed."""
    return make_synth(8, 0, seed=5, image_size=64, pitfalls=PitfallRates().with_rates(corrupt=1.0))


@pytest.mark.parametrize("series, fmt", [(10, "zarr"), (20, "zarr"), (10, "hdf5")])
def test_sigkill_then_rerun_equals_an_uninterrupted_run(resume_data, make_cache, tmp_path, series, fmt):
    """A Zarr ingest killed after its store recorded series and their parts were deleted resumes from the
    store; an HDF5 one keeps every part and rebuilds its store; both end as an uninterrupted run."""
    reference = make_cache(resume_data, size=32, workers=1)
    out = tmp_path / f"c.{fmt}"
    assert killed_ingest(resume_data, out, series, fmt) == -signal.SIGKILL
    work = out.with_name(out.name + ".ingest")
    with pytest.raises(CacheError):  # absent, or a store without its attributes
        cache.open_cache(out)
    tasks = plan_ingest(IngestSettings(str(resume_data), images=ImageSettings(size=32))).tasks
    appended = {task.part_name for task in tasks[:series]}
    kept = {path.name for path in (work / "parts").glob("*.pkl")}
    if fmt in cache.RESUMABLE_FORMATS:  # the store records series whose parts are gone
        assert appended - kept and zarr.open_group(out, mode="r")[cache.JOURNAL].attrs["series"] >= 1
    else:
        assert appended <= kept
    (work / "parts" / "1_2.pkl.999.tmp").write_bytes(b"half a part")
    summary = ingest(resume_data, out, size=32, workers=2, fmt=fmt, progress=False)
    assert summary.series_resumed >= series
    assert not work.exists()
    assert_same_cache(cache.open_cache(out), cache.open_cache(reference))
    if fmt == "zarr":
        assert_same_files(out, reference)


def test_parts_of_the_version_before_the_workers_compressed_resume_to_the_same_cache(resume_data, make_cache,
                                                                                      tmp_path):
    """An ingest interrupted before an upgrade leaves parts that hold SeriesParts (images, not frames): the
    rerun compresses them and ends as an uninterrupted run."""
    import pickle

    from lumbar_fast.ingest.convert import SeriesPart

    reference = make_cache(resume_data, size=32, workers=1)
    out = tmp_path / "c.zarr"
    assert killed_ingest(resume_data, out, 10, "zarr") == -signal.SIGKILL
    kept = sorted((out.with_name(out.name + ".ingest") / "parts").glob("*.pkl"))
    assert kept
    for path in kept:
        part = pickle.loads(path.read_bytes())
        shape = (32, 32)
        older = SeriesPart(part.task, part.stack_index, part.level_labels, part.errors,
                           cache.decode_items(part.stack_frames, shape),
                           cache.decode_items(part.level_frames, (*shape, cache.DEFAULT_CHANNELS)))
        path.write_bytes(pickle.dumps(older))
    ingest(resume_data, out, size=32, workers=1, progress=False)
    assert_same_cache(cache.open_cache(out), cache.open_cache(reference))
    assert_same_files(out, reference)


def test_rerun_is_a_no_op_and_other_parameters_or_schema_are_refused(tiny_data, make_cache, run_cli,
                                                                     tmp_path):
    out = make_cache(tiny_data, size=32, workers=1)
    before = cache.open_cache(out).attrs["cache_id"]
    code, stdout, _ = run_cli("ingest", str(tiny_data), "--out", str(out), "--size", "32")
    assert code == 0 and "up to date" in stdout
    code, _, err = run_cli("ingest", str(tiny_data), "--out", str(out), "--size", "48")
    assert code == 2 and "other parameters (size changed)" in err
    with pytest.raises(CacheError, match="crop_mm changed"):
        ingest(tiny_data, out, size=32, crop_mm={"ax_t2": 30.0}, progress=False)
    with pytest.raises(CacheError, match=r"\(format changed\)"):  # the option's name, not the field's
        ingest(tiny_data, out, size=32, fmt="hdf5", progress=False)
    with pytest.raises(CacheError, match=r"\(split changed: train, not test\)"):  # not its CSVs
        ingest(tiny_data, out, size=32, split="test", progress=False)
    assert cache.open_cache(out).attrs["cache_id"] == before
    old = shutil.copytree(out, tmp_path / "old.zarr")
    zarr.open_group(old, mode="r+").attrs["schema_version"] = cache.SCHEMA_VERSION - 1
    code, _, err = run_cli("ingest", str(tiny_data), "--out", str(old), "--size", "32")
    assert code == 2 and "schema version" in err and len(err.strip().splitlines()) == 1
    assert zarr.open_group(old, mode="r").attrs["cache_id"] == before


def test_a_changed_coordinates_file_at_the_same_path_is_not_taken_for_up_to_date(tiny_data, tmp_path):
    """`locate` rewrites its CSV in place; a rerun of `ingest --coordinates` must not keep the old crops."""
    points = shutil.copy(tiny_data / "train_label_coordinates.csv", tmp_path / "located.csv")
    out = tmp_path / "c.zarr"
    ingest(tiny_data, out, size=32, coordinates=points, workers=1, progress=False)
    assert ingest(tiny_data, out, size=32, coordinates=points, workers=1, progress=False).up_to_date
    before = cache.open_cache(out).attrs["cache_id"]
    table = pd.read_csv(points)
    table.assign(x=table["x"] + 3.0).to_csv(points, index=False)
    with pytest.raises(CacheError, match=r"\(coordinates CSV content changed\)"):
        ingest(tiny_data, out, size=32, coordinates=points, workers=1, progress=False)
    assert cache.open_cache(out).attrs["cache_id"] == before  # the finished cache is left as it was
    data = shutil.copytree(tiny_data, tmp_path / "data", copy_function=os.link)
    ingest(data, tmp_path / "d.zarr", size=32, workers=1, progress=False)
    (data / "train.csv").unlink()
    with pytest.raises(CacheError, match=r"\(labels CSV now missing\)"):
        ingest(data, tmp_path / "d.zarr", size=32, workers=1, progress=False)
    group = zarr.open_group(out, mode="r+")  # a cache of the version before input digests
    group.attrs["params"] = {k: v for k, v in group.attrs["params"].items() if k != "input_digests"}
    with pytest.raises(CacheError, match="earlier version"):
        ingest(tiny_data, out, size=32, coordinates=points, workers=1, progress=False)


def test_hdf5_cache_reads_the_same_as_zarr(tiny_data, make_cache):
    zarr_cache = cache.open_cache(make_cache(tiny_data, size=32, workers=1))
    hdf5_cache = cache.open_cache(make_cache(tiny_data, size=32, workers=1, fmt="hdf5"))
    assert hdf5_cache.path.is_file()
    assert_same_cache(zarr_cache, hdf5_cache)
    assert hdf5_cache.attrs["params"]["fmt"] == "hdf5"


def test_limit_studies_takes_the_first_studies(tiny_data, make_cache):
    reader = cache.open_cache(make_cache(tiny_data, size=32, limit_studies=2))
    train = sorted(pd.read_csv(tiny_data / "train_series_descriptions.csv")["study_id"].unique())
    assert reader.study_labels()["study_id"].tolist() == train[:2]
    assert set(reader.stack_index("sag_t2")["study_id"]) == set(train[:2])


def test_test_split_has_stacks_and_level_crops_only_with_coordinates(tiny_data, make_cache):
    bare = cache.open_cache(make_cache(tiny_data, split="test", size=32))
    test_studies = manifest(tiny_data)["studies"]["test"]
    assert bare.attrs["split"] == "test" and bare.study_labels()["study_id"].tolist() == sorted(test_studies)
    assert (bare.study_labels()[list(rsna.LABEL_COLUMNS)] == rsna.MISSING).all().all()
    assert all(len(bare.level_labels(seq)) == 0 and len(bare.stack_index(seq)) for seq in bare.sequences())
    keyed = cache.open_cache(make_cache(tiny_data, split="test", size=32,
                                        coordinates=tiny_data / "test_label_coordinates.csv",
                                        labels=tiny_data / "test_labels.csv"))
    answers = pd.read_csv(tiny_data / "test_labels.csv").set_index("study_id")
    crops = pd.concat([keyed.level_labels(seq) for seq in keyed.sequences()])
    assert len(crops) == len(pd.read_csv(tiny_data / "test_label_coordinates.csv"))
    for row in crops.itertuples():
        name = answers.at[row.study_id, f"{row.condition}_{row.level}"]
        assert row.severity == (rsna.MISSING if pd.isna(name) else rsna.SEVERITY_FROM_NAME[name])


#: synth and ingest, each with a pool of 2, in a process where any fork of it leaves a marker file: the
#: stand-in, on a CPU machine, for a parent that has initialised CUDA (which a forked worker must not inherit)
FORK_PROBE = """
import os, sys
from pathlib import Path
marker, root = Path(sys.argv[1]), Path(sys.argv[2])
os.register_at_fork(after_in_child=lambda: marker.write_text("forked"))
from lumbar_fast.ingest import ingest
from lumbar_fast.testhooks import INGEST_KILL_AFTER_ENV
from lumbar_fast.phantom import PhantomOptions, generate
generate(root / "data", 2, 0, PhantomOptions(image_size=64), workers=2, progress=False)
ingest(root / "data", root / "c.zarr", size=32, workers=2, progress=False)
"""


def test_worker_pools_never_fork_the_caller(tmp_path):
    from lumbar_fast.processes import pool_context

    assert pool_context().get_start_method() in ("forkserver", "spawn")
    marker = tmp_path / "forked"
    subprocess.run([sys.executable, "-c", FORK_PROBE, str(marker), str(tmp_path)], check=True, timeout=300,
                   cwd=Path(__file__).parents[1])
    assert cache.open_cache(tmp_path / "c.zarr").stack_index("sag_t2").shape[0] > 0
    assert not marker.exists(), "a pool forked the calling process"


class MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (malloc.h): what the main arena holds."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


def main_heap() -> MallInfo2:
    """What this process's main heap holds now."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallInfo2
    return mallinfo2()


def resident_bytes() -> int:
    """This process's resident memory (Linux's /proc/self/statm, in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def has_mallinfo2() -> bool:
    """Whether this process runs on glibc 2.33 or later (mallinfo2), where ctypes can load it by name."""
    library, version = platform.libc_ver()
    return library == "glibc" and tuple(int(part) for part in version.split(".")[:2]) >= (2, 33)


@pytest.mark.skipif(not has_mallinfo2(), reason="glibc's malloc (2.33 or later) only")
def test_a_decoding_process_keeps_freed_arrays_for_the_next_series_and_hands_them_back_after():
    from lumbar_fast.processes import freed_memory_kept

    size = 48 * 2**20  # a series' stack: above the ceiling of glibc's dynamic mmap threshold (32 MiB)
    with freed_memory_kept():
        stack = np.ones(size, np.uint8)
        del stack
        assert main_heap().fordblks >= size  # freed into the heap, not unmapped
        resident_kept = resident_bytes()
    assert resident_bytes() <= resident_kept - size // 2  # handed back to the system on leaving


# --- info -------------------------------------------------------------------------------------------------

def test_info_tells_the_truth(synth_data, synth_cache, run_cli):
    npy = cache.open_cache(synth_cache).array_path("sag_t2", "levels")
    code, stdout, _ = run_cli("info", str(synth_cache), "--json")
    report = json.loads(stdout)
    train = pd.read_csv(synth_data / "train.csv")
    coordinates = pd.read_csv(synth_data / "train_label_coordinates.csv")
    damaged = [d for d in manifest(synth_data)["damaged_files"] if d["path"].startswith("train_images")]
    assert code == 0 and report["studies"] == len(train) and report["split"] == "train"
    assert report["errors"] == len(damaged) and report["schema_version"] == cache.SCHEMA_VERSION
    for condition in rsna.CONDITIONS:
        values = train[[f"{condition}_{lv}" for lv in rsna.LEVELS]].to_numpy().ravel()
        expected = {name: int((values == name).sum()) for name in rsna.SEVERITIES}
        assert {k: report["labels"][condition][k] for k in rsna.SEVERITIES} == expected
        assert report["labels"][condition]["missing"] == int(pd.isna(values).sum())
    for seq, counts in report["sequences"].items():
        conditions = [rsna.CONDITION_TITLES[c] for c in rsna.SEQUENCES[seq].conditions]
        assert counts["level_crops"] == int(coordinates["condition"].isin(conditions).sum())
        assert counts["studies"] == len(train)
    assert report["size_bytes"] == sum(f.stat().st_size for f in synth_cache.rglob("*") if f.is_file())
    assert report["npy_bytes"] == sum(f.stat().st_size for f in npy.parent.iterdir())
    assert report["params"]["size"] == 64 and report["params"]["crop_mm"] == {"sag_t1": 40, "sag_t2": 40,
                                                                                "ax_t2": 50}
    code, text, _ = run_cli("info", str(synth_cache))
    assert code == 0 and f"errors      {len(damaged)}" in text and f"schema {cache.SCHEMA_VERSION}" in text


def test_a_series_listed_twice_in_two_spellings_of_one_type_is_ingested_once(tiny_data, tmp_path):
    from lumbar_fast.ingest.plan import _unique_series

    descriptions = pd.read_csv(tiny_data / "train_series_descriptions.csv")
    twice = pd.concat([descriptions, descriptions.iloc[[0]].assign(
        series_description=descriptions["series_description"].iloc[0].lower() + " ")])
    kept, errors = _unique_series(twice)
    assert len(kept) == len(descriptions) and [e["reason"] for e in errors] == [
        "series listed 2 times in the series descriptions: ingested once"]
