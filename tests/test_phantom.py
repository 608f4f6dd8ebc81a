"""The phantom RSNA folder: CSV layout, readable DICOM, pitfalls, label geometry, determinism, the signal."""

from __future__ import annotations

import copy
import io
import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from lumbar_fast import rsna
from lumbar_fast.dicom import decode_pixels
from lumbar_fast.phantom import MANIFEST_NAME, PhantomOptions, PitfallRates, generate, grading, load_manifest
from lumbar_fast.phantom.anatomy import class_narrowing, sample_anatomy
from lumbar_fast.phantom.answer_key import ANSWER_KEY_NAME
from lumbar_fast.phantom.dicom_writer import TRANSFER_SYNTAXES, Encoding, SeriesHeader, SeriesWriter
from lumbar_fast.phantom.grading import sample_truth
from lumbar_fast.phantom.options import REAL_FREQUENCIES, RSNA_SIZES
from lumbar_fast.phantom.readability import crop_measurements, readability_table
from lumbar_fast.phantom.render import axial_planes, sagittal_planes
from lumbar_fast.phantom.study import _series_size, sample_severity


def read_csv(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, keep_default_na=False, na_values=[""])


def labelled_rows(root: Path, split: str = "train") -> pd.DataFrame:
    """Coordinate rows joined with their severity class id."""
    coords = read_csv(root, f"{split}_label_coordinates.csv")
    labels = read_csv(root, "train.csv" if split == "train" else "test_labels.csv").set_index("study_id")
    columns = [f"{rsna.CONDITION_FROM_TITLE[c]}_{rsna.LEVEL_FROM_TITLE[lv]}"
               for c, lv in zip(coords.condition, coords.level, strict=True)]
    coords["severity"] = [rsna.SEVERITY_FROM_NAME[labels.at[s, col]]
                          for s, col in zip(coords.study_id, columns, strict=True)]
    return coords


def instance_path(root: Path, split: str, row) -> Path:
    return root / f"{split}_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"


def read_intensity(path: Path) -> tuple[np.ndarray, pydicom.Dataset]:
    """Pixels in modality units, MONOCHROME1 turned into MONOCHROME2 (brighter = more signal)."""
    ds = pydicom.dcmread(path)
    return decode_pixels(ds), ds


def disc_mean(pixels: np.ndarray, ds: pydicom.Dataset, x: float, y: float, radius_mm: float = 2.5) -> float:
    """Mean signal within `radius_mm` of pixel (x, y), relative to the slice's bright end (99.5 %ile)."""
    rows, cols = np.mgrid[: pixels.shape[0], : pixels.shape[1]]
    spacing = float(ds.PixelSpacing[0])
    inside = (cols - x) ** 2 + (rows - y) ** 2 <= (radius_mm / spacing) ** 2
    return float(pixels[inside].mean() / np.percentile(pixels, 99.5))


def world_point(ds: pydicom.Dataset, x: float, y: float) -> np.ndarray:
    """World position (mm, LPS) of pixel (x = column, y = row) of a slice."""
    iop = np.array(ds.ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    return np.array(ds.ImagePositionPatient, float) + x * col_spacing * iop[:3] + y * row_spacing * iop[3:]


# --- CSV layout -------------------------------------------------------------------------------------------

def test_csv_files_have_the_competition_layout(synth_data):
    names = {p.name for p in synth_data.iterdir()}
    assert {"train.csv", "train_label_coordinates.csv", "train_series_descriptions.csv",
            "test_series_descriptions.csv", "sample_submission.csv", "train_images", "test_images",
            "test_labels.csv", "test_label_coordinates.csv", MANIFEST_NAME} <= names

    train = read_csv(synth_data, "train.csv")
    assert list(train.columns) == ["study_id", *rsna.LABEL_COLUMNS]
    values = train[list(rsna.LABEL_COLUMNS)].to_numpy().ravel()
    assert set(values[pd.notna(values)]) <= set(rsna.SEVERITIES)
    assert train.study_id.is_unique and len(train) == 12

    coords = read_csv(synth_data, "train_label_coordinates.csv")
    assert list(coords.columns) == ["study_id", "series_id", "instance_number", "condition", "level",
                                    "x", "y"]
    assert set(coords.condition) <= set(rsna.CONDITION_TITLES.values())
    assert set(coords.level) == set(rsna.LEVEL_TITLES.values())
    assert coords.x.dtype == float and coords.y.dtype == float
    assert coords[["study_id", "series_id", "instance_number"]].dtypes.eq(np.int64).all()

    series = read_csv(synth_data, "train_series_descriptions.csv")
    assert list(series.columns) == ["study_id", "series_id", "series_description"]
    assert set(series.series_description) == {seq.description for seq in rsna.SEQUENCES.values()}
    assert set(series.study_id) == set(train.study_id)

    test_series = read_csv(synth_data, "test_series_descriptions.csv")
    submission = read_csv(synth_data, "sample_submission.csv")
    assert list(submission.columns) == ["row_id", *rsna.SUBMISSION_COLUMNS]
    expected_ids = [rsna.row_id(s, c, lv) for s in test_series.study_id.unique()
                    for c in rsna.CONDITIONS for lv in rsna.LEVELS]
    assert submission.row_id.tolist() == expected_ids
    assert np.allclose(submission[list(rsna.SUBMISSION_COLUMNS)].sum(axis=1), 1.0, atol=1e-5)

    test_labels = read_csv(synth_data, "test_labels.csv")
    assert list(test_labels.columns) == list(train.columns)
    assert set(test_labels.study_id) == set(test_series.study_id)
    assert not set(test_labels.study_id) & set(train.study_id)


def test_a_label_has_a_coordinate_row_exactly_when_it_is_present(synth_data):
    for split, labels_name in (("train", "train.csv"), ("test", "test_labels.csv")):
        labels = read_csv(synth_data, labels_name).set_index("study_id")
        present = {(s, col) for s in labels.index for col in rsna.LABEL_COLUMNS
                   if isinstance(labels.at[s, col], str)}
        coords = read_csv(synth_data, f"{split}_label_coordinates.csv")
        rows = [(s, f"{rsna.CONDITION_FROM_TITLE[c]}_{rsna.LEVEL_FROM_TITLE[lv]}")
                for s, c, lv in zip(coords.study_id, coords.condition, coords.level, strict=True)]
        assert len(rows) == len(set(rows))
        assert set(rows) == present
    missing = load_manifest(synth_data)["missing_labels"]
    assert {m["kind"] for m in missing} == {"missing_condition", "missing_label"}


# --- DICOM files ------------------------------------------------------------------------------------------

REQUIRED_TAGS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                 "SeriesDescription", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient",
                 "PixelSpacing", "SliceThickness", "Rows", "Columns", "BitsAllocated", "BitsStored",
                 "HighBit", "PixelRepresentation", "PhotometricInterpretation")


@pytest.mark.filterwarnings("ignore:End of file reached")  # the truncated files
def test_every_dicom_decodes_except_the_damaged_ones(synth_data):
    damaged = {d["path"] for d in load_manifest(synth_data)["damaged_files"]}
    assert damaged
    failed = set()
    for path in sorted(synth_data.glob("*_images/*/*/*.dcm")):
        try:
            ds = pydicom.dcmread(path)
            pixels = ds.pixel_array
        except Exception:
            failed.add(path.relative_to(synth_data).as_posix())
            continue
        assert ds.Modality == "MR" and ds.SOPClassUID == pydicom.uid.MRImageStorage
        assert all(tag in ds for tag in REQUIRED_TAGS), path
        assert pixels.shape == (ds.Rows, ds.Columns)
        assert int(pixels.max()) < (1 << ds.BitsStored)
    assert failed == damaged


def test_damaged_files_are_never_labelled_slices(synth_data):
    coords = pd.concat([read_csv(synth_data, f"{s}_label_coordinates.csv").assign(split=s)
                        for s in ("train", "test")])
    labelled = {instance_path(synth_data, r.split, r).relative_to(synth_data).as_posix()
                for r in coords.itertuples()}
    assert not labelled & {d["path"] for d in load_manifest(synth_data)["damaged_files"]}


def series_facts(root: Path, entry: dict, damaged: set[str]) -> dict:
    """What the intact files of one series show, in the manifest's vocabulary."""
    folder = root / f"{entry['split']}_images" / str(entry["study_id"]) / str(entry["series_id"])
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")
               if p.relative_to(root).as_posix() not in damaged]
    orientations = {tuple(round(float(v), 4) for v in h.ImageOrientationPatient) for h in headers}
    normal = np.cross(*np.reshape(sorted(orientations)[0], (2, 3)))
    first_stack = [h for h in headers
                   if tuple(round(float(v), 4) for v in h.ImageOrientationPatient) == sorted(orientations)[0]]
    spatial = [int(h.InstanceNumber) for h in sorted(first_stack,
                                                     key=lambda h: np.dot(h.ImagePositionPatient, normal))]
    syntaxes = {h.file_meta.TransferSyntaxUID for h in headers}
    return {
        "multi_stack": len(orientations) > 1,
        "shuffled_instances": min(int(h.InstanceNumber) for h in headers) > 1 or spatial != sorted(spatial),
        "monochrome1": {h.PhotometricInterpretation for h in headers} == {"MONOCHROME1"},
        "rescale": all(float(h.get("RescaleSlope", 1)) != 1 for h in headers),
        "bits16": {int(h.BitsStored) for h in headers} == {16},
        "rle": syntaxes == {RLELossless},
        "j2k": syntaxes == {JPEG2000Lossless},
    }


def test_each_pitfall_is_present_and_the_manifest_matches_the_files(synth_data):
    found = load_manifest(synth_data)
    assert set(found["pitfalls"]) == {"shuffled_instances", "multi_stack", "varied_size", "monochrome1",
                                      "rescale", "bits16", "rle", "j2k", "duplicate_series"}
    damaged = {d["path"] for d in found["damaged_files"]}
    for entry in found["series"]:
        facts = series_facts(synth_data, entry, damaged)
        for name, present in facts.items():
            assert present == (name in entry["pitfalls"]), (name, entry)
    shapes = {tuple(shape) for entry in found["series"] for shape in entry["shapes"]}
    spacings = {tuple(s) for entry in found["series"] for s in entry["pixel_spacing"]}
    assert len(shapes) > 2 and len(spacings) > 2


def test_duplicate_series_share_a_type_and_only_one_is_labelled(synth_data):
    series = read_csv(synth_data, "train_series_descriptions.csv")
    coords = read_csv(synth_data, "train_label_coordinates.csv")
    duplicates = [e for e in load_manifest(synth_data)["series"]
                  if "duplicate_series" in e["pitfalls"] and e["split"] == "train"]
    assert duplicates
    for entry in duplicates:
        same_type = series[(series.study_id == entry["study_id"])
                           & (series.series_description == entry["series_description"])]
        assert len(same_type) == 2
        assert entry["series_id"] not in set(coords.series_id)


def test_clean_mode_has_no_pitfalls(make_synth):
    root = make_synth(2, 0, seed=3, image_size=96, pitfalls=PitfallRates.none())
    found = load_manifest(root)
    assert found["pitfalls"] == {} and found["damaged_files"] == [] and found["missing_labels"] == []
    assert not read_csv(root, "train.csv")[list(rsna.LABEL_COLUMNS)].isna().any().any()
    for path in root.glob("train_images/*/*/*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (ds.Rows, ds.Columns, ds.BitsStored) == (96, 96, 12)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert "RescaleSlope" not in ds


# --- label geometry -----------------------------------------------------------------------------------------

def test_coordinates_point_inside_existing_instances_of_the_right_series(synth_data):
    for split in ("train", "test"):
        series = read_csv(synth_data, f"{split}_series_descriptions.csv").set_index("series_id")
        for row in read_csv(synth_data, f"{split}_label_coordinates.csv").itertuples():
            ds = pydicom.dcmread(instance_path(synth_data, split, row), stop_before_pixels=True)
            assert 0 <= row.x < ds.Columns and 0 <= row.y < ds.Rows
            sequence = rsna.sequence_of_description(series.at[row.series_id, "series_description"])
            assert rsna.SEQUENCE_OF_CONDITION[rsna.CONDITION_FROM_TITLE[row.condition]] == sequence


def test_coordinates_sit_where_a_radiologist_marks_them(synth_data):
    """Canal on the midline, left structures at +x (LPS), levels descending from L1/L2 to L5/S1."""
    coords = read_csv(synth_data, "train_label_coordinates.csv")
    headers = [pydicom.dcmread(instance_path(synth_data, "train", r), stop_before_pixels=True)
               for r in coords.itertuples()]
    points = np.array([world_point(h, r.x, r.y) for h, r in zip(headers, coords.itertuples(), strict=True)])
    coords[["wx", "wy", "wz"]] = points
    spinal = coords[coords.condition == "Spinal Canal Stenosis"]
    assert spinal.wx.abs().max() < 4.0  # within half a sagittal slice gap of the midline
    for side, sign in (("Left", 1), ("Right", -1)):
        for kind, low, high in (("Neural Foraminal Narrowing", 17, 28), ("Subarticular Stenosis", 9, 15)):
            lateral = sign * coords[coords.condition == f"{side} {kind}"].wx
            assert lateral.between(low, high).all(), (side, kind)
    axial_and_canal = coords[coords.condition.str.contains("Spinal|Subarticular")]
    for _, study in axial_and_canal.groupby(["study_id", "condition"]):
        z = study.sort_values("level").wz.to_numpy()
        assert (np.diff(z) < -25).all()  # levels at least 25 mm apart, L1/L2 on top


# --- determinism --------------------------------------------------------------------------------------------

def test_same_seed_same_bytes_whatever_the_worker_count(make_synth, tmp_path):
    reference = make_synth(2, 1, seed=7, image_size=64, difficulty="real")
    generate(tmp_path / "again", 2, 1, PhantomOptions(seed=7, image_size=64), workers=1, progress=False)
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*")
                           if p.is_file())
    for relative in files:
        assert (reference / relative).read_bytes() == (tmp_path / "again" / relative).read_bytes(), relative


def test_another_seed_gives_another_data_set(make_synth):
    first, second = make_synth(2, seed=7, image_size=64), make_synth(2, seed=8, image_size=64)
    assert (first / "train.csv").read_bytes() != (second / "train.csv").read_bytes()


# --- the planted signal -------------------------------------------------------------------------------------

LEFT, RIGHT = (rsna.CONDITION_TITLES[f"{side}_neural_foraminal_narrowing"] for side in ("left", "right"))
OTHER_FORAMEN = {LEFT: RIGHT, RIGHT: LEFT}


def signal_table(root: Path) -> pd.DataFrame:
    """Per labelled row: the measurement at its own point; at its condition's point one level away; and,
    for foramina, at its own (x, y) on the other side's labelled slice of the same level (a wrong slice)."""
    coords = labelled_rows(root)
    coords["group"] = [rsna.CONDITION_GROUP[rsna.CONDITION_FROM_TITLE[c]] for c in coords.condition]
    slices = {(r.study_id, r.condition, r.level): r for r in coords.itertuples()}
    here, wrong_slice = {}, {}
    for row in coords.itertuples():
        pixels, ds = read_intensity(instance_path(root, "train", row))
        here[row.Index] = disc_mean(pixels, ds, row.x, row.y)
        mirror = slices.get((row.study_id, OTHER_FORAMEN.get(row.condition), row.level))
        if mirror is not None:
            pixels, ds = read_intensity(instance_path(root, "train", mirror))
            wrong_slice[row.Index] = disc_mean(pixels, ds, row.x, row.y)
    coords["here"], coords["wrong_slice"] = pd.Series(here), pd.Series(wrong_slice)
    level_index = coords.level.map(list(rsna.LEVEL_TITLES.values()).index)
    neighbour = coords.assign(level_index=level_index).set_index(["study_id", "condition", "level_index"])
    coords["other_level"] = [
        neighbour.here.get((r.study_id, r.condition, i + 1 if i < 4 else i - 1), np.nan)
        for r, i in zip(coords.itertuples(), level_index, strict=True)
    ]
    return coords


def correlation(rows: pd.DataFrame, column: str) -> float:
    known = rows.dropna(subset=[column])
    return float(np.corrcoef(known.severity, known[column])[0, 1])


def test_a_measurement_at_the_label_separates_the_classes_and_elsewhere_does_not(synth_data):
    table = signal_table(synth_data)
    for group, rows in table.groupby("group"):
        means = rows.groupby("severity").here.mean()
        spread = rows.groupby("severity").here.std().max()
        assert list(means.index) == [0, 1, 2], group
        assert means[0] - means[1] > spread and means[1] - means[2] > spread, (group, means, spread)
        assert correlation(rows, "here") < -0.8, group
        assert abs(correlation(rows, "other_level")) < 0.3, group
    foramina = table[table.group == "foraminal"]
    assert foramina.wrong_slice.notna().sum() > 50
    assert abs(correlation(foramina, "wrong_slice")) < 0.3


def test_signal_knob_scales_the_narrowing():
    severity = sample_severity(np.random.default_rng(0), REAL_FREQUENCIES)
    full = sample_anatomy(np.random.default_rng(1), class_narrowing(severity, 1.0)).narrowing
    subtle = sample_anatomy(np.random.default_rng(1), class_narrowing(severity, 0.4)).narrowing
    assert all(subtle[k] == pytest.approx(0.4 * full[k]) for k in full)


def test_signal_knob_under_noise_scales_only_the_narrowing_the_pixels_show():
    full = sample_truth(np.random.default_rng(1), REAL_FREQUENCIES, 1.0)
    subtle = sample_truth(np.random.default_rng(1), REAL_FREQUENCIES, 0.4)
    assert all(subtle.narrowing[k] == pytest.approx(0.4 * full.narrowing[k]) for k in full.narrowing)
    assert subtle.grades == full.grades and subtle.latent == full.latent
    assert all(np.array_equal(subtle.probabilities[k], full.probabilities[k]) for k in full.probabilities)


@pytest.mark.parametrize("balanced", [False, True])
def test_class_frequencies_follow_the_setting(balanced):
    options = PhantomOptions(balanced=balanced)
    rng = np.random.default_rng(0)
    draws = [sample_severity(rng, options.frequencies) for _ in range(600)]
    for group, expected in options.frequencies.items():
        classes = [d[key] for d in draws for key in d if rsna.CONDITION_GROUP[key[0]] == group]
        observed = np.bincount(classes, minlength=3) / len(classes)
        assert np.allclose(observed, expected, atol=0.025), (group, observed)


# --- the command line ---------------------------------------------------------------------------------------

def run_synth(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lumbar_fast", "synth", *args]
    return subprocess.run(command, capture_output=True, text=True)


def test_cli_writes_a_folder_with_the_pitfalls_asked_for(tmp_path):
    out = tmp_path / "rsna"
    result = run_synth(str(out), "--studies", "1", "--image-size", "64", "--no-pitfalls",
                       "--pitfall", "rle=1", "--quiet", "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "1 train + 0 test studies" in result.stdout
    assert {e["transfer_syntax"] for e in load_manifest(out)["series"]} == {"rle"}


def test_without_test_studies_the_layout_is_still_whole(make_synth, run_cli, tmp_path):
    """--test-studies 0 still writes test_images/ and every test CSV, with its header and no rows."""
    root = make_synth(2, 0, seed=3, image_size=96, pitfalls=PitfallRates.none())
    assert (root / "test_images").is_dir() and not any((root / "test_images").iterdir())
    headers = {"test_series_descriptions.csv": ["study_id", "series_id", "series_description"],
               "sample_submission.csv": ["row_id", *rsna.SUBMISSION_COLUMNS],
               "test_labels.csv": ["study_id", *rsna.LABEL_COLUMNS],
               "test_label_coordinates.csv": list(rsna.COORDINATE_COLUMNS)}
    for name, columns in headers.items():
        table = read_csv(root, name)
        assert list(table.columns) == columns and table.empty, name
    code, _, err = run_cli("ingest", root, "--split", "test", "--out", tmp_path / "c.zarr", "--no-progress")
    assert code == 2 and "lists no series" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("make_args, message", [
    (lambda d: [d, "--studies", "1"], "not an empty folder"),
    (lambda d: [d / "new", "--studies", "0"], "at least 1"),
    (lambda d: [d / "new", "--studies", "1", "--test-studies", "-1"], "0 or more"),
    (lambda d: [d / "file.txt" / "sub", "--studies", "1"], "cannot create"),
    (lambda d: [d / "new", "--studies", "1", "--pitfall", "rle=2"], "outside [0, 1]"),
    (lambda d: [d / "new", "--studies", "1", "--pitfall", "nope=0.1"], "unknown pitfall"),
    (lambda d: [d / "new", "--studies", "1", "--pitfall", "rle"], "NAME=RATE"),
    (lambda d: [d / "file.txt", "--studies", "1"], "file.txt exists and is not a folder"),
    (lambda d: [d / "new", "--studies", "1", "--image-size", "8"], "--image-size 8 is outside 64..1024"),
    (lambda d: [d / "new", "--studies", "1", "--workers", "0"], "at least 1"),
])
def test_cli_bad_input_is_one_line_error(tmp_path, run_cli, make_args, message):
    (tmp_path / "file.txt").write_text("occupied")
    code, _, stderr = run_cli("synth", *make_args(tmp_path))
    assert code != 0
    assert stderr.strip().count("\n") == 0 and message in stderr, stderr
    assert not (tmp_path / "new").exists()


def test_off_centre_series_are_shifted_yet_cover_every_labelled_point():
    """The off_centre pitfall moves sagittal stacks along x and lets axial series run on past the end discs;
    every labelled point still lies within half a slice gap of the series' nearest plane."""
    anatomy = sample_anatomy(np.random.default_rng(0), class_narrowing({}, 1.0))
    points = {seq: [anatomy.labelled_point(c, lv) for c in rsna.get_sequence(seq).conditions
                    for lv in rsna.LEVELS] for seq in rsna.SEQUENCES}

    def sagittal_centres(off_centre: bool) -> list[float]:
        return [float(np.mean([p.position[0] for p in
                               sagittal_planes(anatomy, np.random.default_rng(i), 64, off_centre)]))
                for i in range(30)]

    assert np.ptp(sagittal_centres(False)) < 3.0 and np.ptp(sagittal_centres(True)) > 12.0
    centred = [len(axial_planes(anatomy, np.random.default_rng(i), [64])) for i in range(30)]
    longer = [len(axial_planes(anatomy, np.random.default_rng(i), [64], True)) for i in range(30)]
    assert np.mean(longer) > np.mean(centred) + 3
    for i in range(30):
        for seq, planes in (("sag_t1", sagittal_planes(anatomy, np.random.default_rng(i), 64, True)),
                            ("ax_t2", axial_planes(anatomy, np.random.default_rng(i), [64, 64], True))):
            first = [p.position for p in planes if p.stack == 0]
            gap = float(np.linalg.norm(np.subtract(first[1], first[0])))
            for point in points[seq]:
                assert min(abs(p.to_pixel(point)[2]) for p in planes) <= 0.5 * gap + 0.5, (seq, i)


# --- real difficulty: the noise model, its answer key, readable pixels ------------------------------------

@pytest.fixture(scope="module")
def real_phantom(make_synth) -> Path:
    """4 train + 2 test studies at real difficulty, some labels missing (test_score.py builds it too)."""
    return make_synth(4, 2, seed=5, image_size=64, difficulty="real",
                      pitfalls=PitfallRates.none().with_rates(missing_label=0.1))


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_answer_key_probabilities_match_an_independent_computation(real_phantom):
    """p(grade | latent) and the narrowing recomputed from the manifest's model and each row's latent."""
    manifest = load_manifest(real_phantom)
    model, signal = manifest["grading"], manifest["options"]["signal"]
    key = read_csv(real_phantom, ANSWER_KEY_NAME)
    studies = manifest["studies"]["train"] + manifest["studies"]["test"]
    assert len(key) == 25 * len(studies) and set(key.study_id) == set(studies)
    for row in key.itertuples():
        group = model["groups"][rsna.CONDITION_GROUP[row.condition]]
        t1, t2 = group["thresholds"]
        p0 = phi((t1 - row.latent) / group["spread_any"])
        p2 = (1.0 - p0) * phi((row.latent - t2) / group["spread_severe"])
        expected = (p0, 1.0 - p0 - p2, p2)
        assert (row.p_normal_mild, row.p_moderate, row.p_severe) == pytest.approx(expected, abs=1e-7)
        shown = signal * model["narrowing_max"] * phi((row.latent - (t1 + t2) / 2) / (t2 - t1))
        assert row.narrowing == pytest.approx(min(0.95, shown), abs=1e-7)


def test_every_label_is_a_grade_the_answer_key_allows_and_missing_ones_keep_their_row(real_phantom):
    key = read_csv(real_phantom, ANSWER_KEY_NAME).set_index("row_id")
    missing = load_manifest(real_phantom)["missing_labels"]
    assert missing
    for labels_name in ("train.csv", "test_labels.csv"):
        labels = read_csv(real_phantom, labels_name).set_index("study_id")
        for study in labels.index:
            for column in rsna.LABEL_COLUMNS:
                grade = labels.at[study, column]
                row = key.loc[f"{study}_{column}"]
                if isinstance(grade, str):
                    assert row[f"p_{rsna.SUBMISSION_COLUMNS[rsna.SEVERITY_FROM_NAME[grade]]}"] > 1e-12
    for m in missing:
        assert f"{m['study_id']}_{m['condition']}_{m['level']}" in key.index


def test_easy_difficulty_writes_no_answer_key_and_no_model(make_synth, real_phantom):
    easy = make_synth(2, 1, seed=5, image_size=64, difficulty="easy", pitfalls=PitfallRates.none())
    assert not (easy / ANSWER_KEY_NAME).exists() and "grading" not in load_manifest(easy)
    assert load_manifest(easy)["options"]["difficulty"] == "easy"
    assert (real_phantom / ANSWER_KEY_NAME).exists()
    assert load_manifest(real_phantom)["options"]["difficulty"] == "real"


@pytest.mark.parametrize("balanced", [False, True])
def test_rater_grades_follow_the_class_frequencies(balanced):
    options = PhantomOptions(balanced=balanced)
    rng = np.random.default_rng(0)
    _, conditions, p = grading.simulate(rng, 3000, options.frequencies)
    grades = grading.draw_grades(rng, p)
    groups = np.array([rsna.CONDITION_GROUP[c] for c in conditions])
    for group, expected in options.frequencies.items():
        observed = np.bincount(grades[groups == group], minlength=3) / (groups == group).sum()
        assert np.allclose(observed, expected, atol=0.02), (group, observed)


def test_levels_of_one_patient_degenerate_together():
    """Two spinal levels' latents correlate by the loading squared, around each level's mean."""
    latents = grading.sample_latents(np.random.default_rng(0), 4000)
    spinal = latents[:, rsna.CONDITIONS.index("spinal_canal_stenosis")]
    loading = grading.NOISE["spinal"].loading
    assert np.corrcoef(spinal[:, 0], spinal[:, 3])[0, 1] == pytest.approx(loading ** 2, abs=0.05)
    assert np.allclose(spinal.mean(axis=0), grading.LEVEL_EFFECT, atol=0.06)


def test_pixels_carry_the_drawn_narrowing(make_synth, make_cache):
    """A plain measurement at the labelled point of 64-pixel crops recovers the narrowing (R² >= 0.9 per group
    at the default base size: docs/phantom.md; this small phantom at base size 160 reaches 0.90-0.99)."""
    root = make_synth(6, 0, seed=2, image_size=160, difficulty="real", pitfalls=PitfallRates.none())
    table = readability_table(crop_measurements(make_cache(root, channels=3), root / ANSWER_KEY_NAME))
    assert set(table.index) == set(REAL_FREQUENCIES)
    assert (table.r_squared > 0.8).all(), table
    assert (table.correlation < -0.8).all(), table


def pydicom_dataset(writer: SeriesWriter, values: dict[str, object]) -> pydicom.Dataset:
    """A copy of the writer's series dataset holding one file's `instance_values`, uncompressed: what
    pydicom itself would write for that file."""
    ds = copy.deepcopy(writer.dataset)
    ds.file_meta.MediaStorageSOPInstanceUID = values["SOPInstanceUID"]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("encoding", [
    Encoding(full_scale=2000.0),
    Encoding(full_scale=20000.0, bits_stored=16, monochrome1=True, rescale=(2.5, -100.25)),
    Encoding(full_scale=2000.0, transfer_syntax="rle"),
    Encoding(full_scale=20000.0, bits_stored=16, monochrome1=True, transfer_syntax="j2k"),
])
def test_assembled_files_are_the_bytes_pydicom_writes(encoding, tmp_path):
    """The writer assembles files from bytes: each is what pydicom's own writer makes of the same
    attributes (odd-length values padded, elements in tag order, the file meta's group length), compressed
    ones what pydicom's compress (pylibjpeg) and save_as make of them."""
    writer = SeriesWriter(SeriesHeader(12345, 678, 3, "Sagittal T2/STIR", encoding))
    rng = np.random.default_rng(0)
    for instance, plane in enumerate(sagittal_planes(sample_anatomy(rng, class_narrowing(
            sample_severity(rng, REAL_FREQUENCIES), 1.0)), rng, 48, False)[:3], start=9):
        image = rng.random((plane.rows, plane.cols)).astype(np.float32)
        writer.write(tmp_path / "ours.dcm", image, plane, instance)
        reference, ds = io.BytesIO(), pydicom_dataset(writer, writer.instance_values(image, plane, instance))
        if encoding.transfer_syntax != "explicit_little":
            ds.compress(TRANSFER_SYNTAXES[encoding.transfer_syntax], encoding_plugin="pylibjpeg",
                        generate_instance_uid=False)
        ds.save_as(reference, enforce_file_format=True)
        assert (tmp_path / "ours.dcm").read_bytes() == reference.getvalue()
        assert pydicom.dcmread(tmp_path / "ours.dcm").InstanceNumber == instance


def test_the_rsna_size_spread_draws_each_series_size_from_the_real_spread(run_cli, tmp_path):
    """`--size-spread rsna`: each series at a size drawn from RSNA_SIZES at its share (image_size unused);
    without pitfalls every file of a series shares it. "base" draws nothing (earlier phantoms keep their
    bytes)."""
    rng = np.random.default_rng(3)
    draws = [_series_size(rng, PhantomOptions(size_spread="rsna")) for _ in range(4000)]
    for size, share in RSNA_SIZES.items():
        assert draws.count(size) / len(draws) == pytest.approx(share, abs=0.025)
    state = rng.bit_generator.state
    assert _series_size(rng, PhantomOptions(image_size=96)) == 96 and rng.bit_generator.state == state
    code, _, err = run_cli("synth", tmp_path / "d", "--studies", "1", "--size-spread", "rsna",
                           "--no-pitfalls", "--image-size", "64", "--quiet", "--workers", "1")
    assert code == 0, err
    for series in (tmp_path / "d" / "train_images").glob("*/*"):
        shapes = {(ds.Rows, ds.Columns) for ds in map(partial(pydicom.dcmread, stop_before_pixels=True),
                                                          series.glob("*.dcm"))}
        assert len(shapes) == 1 and shapes.pop()[0] in RSNA_SIZES
    assert load_manifest(tmp_path / "d")["options"]["size_spread"] == "rsna"
