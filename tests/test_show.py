"""`lumbar-fast show`: pictures render as PNGs of the planned size, and markers sit where labels map."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from lumbar_fast import rsna, show
from lumbar_fast.cache import open_cache
from lumbar_fast.cli import main
from lumbar_fast.errors import LumbarFastError


def read_png(path) -> np.ndarray:
    """The RGB pixels of a PNG file, after checking that it is one."""
    with Image.open(path) as png:
        assert png.format == "PNG"
        return np.asarray(png.convert("RGB")).astype(int)


def colour_centroids(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    """(x, y) centroids of the connected blobs of exactly `colour`, in continuous pixel coordinates."""
    blobs, count = ndimage.label(np.all(pixels == colour, axis=-1), structure=np.ones((3, 3)))
    centres = ndimage.center_of_mass(np.ones(blobs.shape), blobs, range(1, count + 1))
    return np.array([(x + 0.5, y + 0.5) for y, x in centres]).reshape(-1, 2)


def assert_blob_at(centres: np.ndarray, x: float, y: float, tolerance: float = 1.5) -> None:
    """One of the blob `centres` lies within `tolerance` px of (x, y)."""
    assert len(centres), "no marker of that colour"
    distance = np.hypot(*(centres - (x, y)).T).min()
    assert distance <= tolerance, f"nearest marker is {distance:.1f} px from ({x:.1f}, {y:.1f})"


def test_stack_mapping_is_the_contracts():
    # (x · S / cols, y · S / rows): a 200-column, 400-row instance resized to 224×224
    assert show.to_stack_pixels(100, 50, rows=400, cols=200, size=224) == (112.0, 28.0)


def test_markers_are_named_by_level_and_side():
    spinal = show.level_marker(1, 2, "Spinal Canal Stenosis", "L4/L5", "label")
    assert (spinal.x, spinal.y, spinal.label, spinal.name_left) == (1, 2, "L4/L5", False)
    assert show.level_marker(0, 0, "left_neural_foraminal_narrowing", "l5_s1", "label").label == "L5/S1 L"
    right = show.level_marker(0, 0, "Right Subarticular Stenosis", "L1/L2", "points")
    assert (right.label, right.kind, right.name_left) == ("L1/L2 R", "points", True)


def test_gallery_has_planned_size_and_markers_where_they_map(tmp_path):
    rng = np.random.default_rng(0)
    shapes = [(224, 224), (150, 100), (64, 200), (224, 224), (90, 90)]
    items = []
    for i, (h, w) in enumerate(shapes):
        image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        marker = show.Marker(x=w * 0.25 + i, y=h * 0.6, label=f"m{i}", kind="label" if i % 2 else "points")
        items.append(show.Panel((image,), show.prediction_caption(i % 3, (0.2, 0.3, 0.5)), (marker,)))
    out = tmp_path / "gallery.png"
    picture = show.render_gallery(items, out, title="five items")

    tile, row_height = show.GALLERY_TILE, show.GALLERY_TILE + 2 * show.LINE + show.GAP
    columns = 3  # ceil(sqrt(5))
    pixels = read_png(out)
    assert pixels.shape[1::-1] == (2 * show.MARGIN + columns * tile + (columns - 1) * show.GAP,
                                   2 * show.MARGIN + show.HEADER + 2 * row_height - show.GAP)
    for i, item in enumerate(items):
        h, w = shapes[i]
        left = show.MARGIN + (i % columns) * (tile + show.GAP)
        top = show.MARGIN + show.HEADER + (i // columns) * row_height
        marker = item.markers[0]
        expected = (left + marker.x * tile / w, top + marker.y * tile / h)
        assert picture.drawn[i][1:] == pytest.approx(expected)
        assert_blob_at(colour_centroids(pixels, show.MARKER_COLOURS[marker.kind]), *expected)


def test_saved_palette_keeps_greys_within_one_level_and_drawing_colours_exact():
    greys = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    colours = np.array([[list(show.MARKER_COLOURS["label"]), list(show.MARKER_COLOURS["points"]),
                         list(show.MARKER_TEXT["label"]), list(show.BACKGROUND)]], dtype=np.uint8)
    back = np.asarray(show.to_palette(Image.fromarray(greys)).convert("RGB")).astype(int)
    assert np.abs(back - greys).max() <= 1
    assert np.array_equal(np.asarray(show.to_palette(Image.fromarray(colours)).convert("RGB")), colours)


def test_prediction_caption():
    assert show.prediction_caption(2, (0.1, 0.2, 0.7)) == ("truth Severe", "p 0.10 0.20 0.70")
    assert show.prediction_caption(-1, (1, 0, 0))[0] == "truth missing"


def test_severity_and_condition_spellings():
    assert [show.parse_severity(s) for s in ("Normal/Mild", "moderate", "2", "severe")] == [0, 1, 2, 2]
    assert show.parse_condition("Spinal Canal Stenosis") == "spinal_canal_stenosis"
    with pytest.raises(LumbarFastError, match="unknown severity"):
        show.parse_severity("terrible")
    with pytest.raises(LumbarFastError, match="unknown condition"):
        show.parse_condition("scoliosis")


def test_empty_gallery_is_a_user_error(tmp_path):
    with pytest.raises(LumbarFastError, match="empty"):
        show.render_gallery([], tmp_path / "x.png")


# ---- on a real cache (synth_data ingested) -----------------------------------------------------------


@pytest.fixture(scope="module")
def reader(synth_cache):
    return open_cache(synth_cache)


def tile_origin(plan: show.Layout, image: np.ndarray, caption: str) -> tuple[int, int]:
    """The corner of the one tile on a sheet that shows `image` under `caption`."""
    found = [(x, y) for panel, x, y in plan.panels
             if panel.caption == (caption,) and np.array_equal(panel.images[0], image)]
    assert len(found) == 1, f"{len(found)} tiles show {caption}"
    return found[0]


def expected_sheet_height(reader, study: int, seq: str) -> int:
    """Sheet height from the counts: a title, per stack a title and rows of 12 slices, then rows of crops."""
    index, labels = reader.stack_index(seq), reader.level_labels(seq)
    stacks = index[index.study_id == study].groupby(["series_id", "stack"]).size()
    crops = int((labels.study_id == study).sum())
    channels = reader.level_images(seq).shape[-1]
    tile, gap = show.SHEET_TILE, show.GAP
    crops_per_row = (show.SHEET_WIDTH - 2 * show.MARGIN + gap) // (channels * (tile + gap))
    height = show.HEADER + sum(show.HEADER + -(-n // 12) * (tile + show.LINE + gap) for n in stacks)
    if crops:
        height += show.HEADER + -(-crops // crops_per_row) * (tile + 2 * show.LINE + gap)
    return height + 2 * show.MARGIN - gap


@pytest.mark.parametrize("seq", ["sag_t1", "sag_t2", "ax_t2"])
def test_contact_sheet_draws_every_label_where_it_maps(reader, tmp_path, seq):
    labels, index, stacks = reader.level_labels(seq), reader.stack_index(seq), reader.stack_images(seq)
    study = int(labels.study_id.iloc[0])
    labels = labels[labels.study_id == study]
    plan, unplaced = show.study_sheet(reader, study, [seq])
    assert plan.texts[0][2] == f"study {study}: {show.LEGEND}"  # no --points: no cross in the legend
    out = tmp_path / "sheet.png"
    picture = show.draw(plan)
    show.save_png(picture, out)

    pixels = read_png(out)
    assert pixels.shape[1::-1] == (show.SHEET_WIDTH, expected_sheet_height(reader, study, seq))
    dots = colour_centroids(pixels, show.MARKER_COLOURS["label"])
    drawn = {marker.label: (px, py) for marker, px, py in picture.drawn}
    assert len(drawn) == len(picture.drawn) == len(labels)
    size, tile = stacks.shape[-1], show.SHEET_TILE
    for label in labels.itertuples():
        slice_row = index.loc[label.stack_row]
        left, top = tile_origin(plan, stacks[label.stack_row], f"#{label.slice} i{label.instance_number}")
        # the label's (x, y) on the S×S stack image (contract), then that image scaled onto its tile
        expected = (left + label.x * size / slice_row.cols * tile / size,
                    top + label.y * size / slice_row.rows * tile / size)
        name = show.level_marker(0, 0, label.condition, label.level, "label").label
        assert drawn[name] == pytest.approx(expected)
        assert_blob_at(dots, *expected)
        # the tile really shows that slice: its grey pixels are the slice's resized image
        shown = pixels[top:top + tile, left:left + tile]
        grey = (shown[..., 0] == shown[..., 1]) & (shown[..., 1] == shown[..., 2])
        thumbnail = np.asarray(Image.fromarray(stacks[label.stack_row]).resize((tile, tile),
                                                                              Image.Resampling.BILINEAR))
        same = (np.abs(shown[..., 0] - thumbnail) <= 1)[grey]  # the saved palette keeps greys within 1
        assert grey.mean() > 0.8 and same.mean() > 0.8  # (names' black outlines are grey too)


def test_points_file_draws_green_crosses_where_they_map(reader, tmp_path):
    seq = "ax_t2"
    labels, index, stacks = reader.level_labels(seq), reader.stack_index(seq), reader.stack_images(seq)
    study = int(labels.study_id.iloc[-1])
    labels = labels[labels.study_id == study].reset_index(drop=True)
    cols = index.loc[labels.stack_row, "cols"].to_numpy()
    shift = np.where(labels.x < cols / 2, 0.2, -0.2) * cols  # well clear of the labelled dot
    points = pd.DataFrame({
        "study_id": study, "series_id": labels.series_id, "instance_number": labels.instance_number,
        "condition": labels.condition.map(rsna.CONDITION_TITLES),
        "level": labels.level.map(rsna.LEVEL_TITLES), "x": labels.x + shift, "y": labels.y})
    off_cache = points.iloc[:1].assign(instance_number=10**6)
    sagittal = reader.level_labels("sag_t2")  # cached, but on a sequence not drawn: neither drawn nor missed
    sagittal = sagittal[sagittal.study_id == study][list(show.POINT_COLUMNS)]
    csv = tmp_path / "points.csv"
    pd.concat([points, off_cache, sagittal]).to_csv(csv, index=False)

    plan, unplaced = show.study_sheet(reader, study, [seq], show.read_points(csv))
    assert plan.texts[0][2].endswith("green cross: --points")
    out = tmp_path / "sheet.png"
    show.save_png(show.draw(plan), out)
    assert unplaced == 1
    crosses = colour_centroids(read_png(out), show.MARKER_COLOURS["points"])
    assert len(crosses) == len(points)
    size, tile = stacks.shape[-1], show.SHEET_TILE
    for point, label in zip(points.itertuples(), labels.itertuples(), strict=True):
        slice_row = index.loc[label.stack_row]
        left, top = tile_origin(plan, stacks[label.stack_row], f"#{label.slice} i{label.instance_number}")
        assert_blob_at(crosses, left + point.x * size / slice_row.cols * tile / size,
                       top + point.y * size / slice_row.rows * tile / size)


def test_grid_shows_random_crops_of_one_class(reader, synth_cache, tmp_path, capsys):
    labels, crops = reader.level_labels("sag_t2"), reader.level_images("sag_t2")
    of_class = labels.index[(labels.condition == "spinal_canal_stenosis") & (labels.severity == 2)]
    n = min(7, len(of_class))
    assert n >= 2
    out = tmp_path / "grid.png"
    main(["show", str(synth_cache), "--grid", "--condition", "spinal_canal_stenosis", "--severity", "Severe",
          "--n", str(n), "--seed", "3", "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and f": {n} of {len(of_class)} crops" in printed  # what --n found

    columns, rows = math.ceil(math.sqrt(n)), math.ceil(n / math.ceil(math.sqrt(n)))
    tile, gap = show.GALLERY_TILE, show.GAP
    assert read_png(out).shape[1::-1] == (
        2 * show.MARGIN + columns * tile + (columns - 1) * gap,
        2 * show.MARGIN + show.HEADER + rows * (tile + 2 * show.LINE + gap) - gap)
    panels, _ = show.class_grid(reader, "spinal_canal_stenosis", 2, n, seed=3)
    middles = [crops[row][..., crops.shape[-1] // 2] for row in of_class]
    assert len(panels) == n
    assert all(any(np.array_equal(p.images[0], m) for m in middles) for p in panels)


@pytest.mark.parametrize(("args", "message"), [
    (["--study", "1"], "study 1 is not in the cache"),
    (["--study", "{study}", "--sequence", "sag_t3"], "unknown sequence 'sag_t3'"),
    (["--grid", "--condition", "scoliosis", "--severity", "Severe"], "unknown condition 'scoliosis'"),
    (["--grid", "--condition", "spinal_canal_stenosis", "--severity", "awful"], "unknown severity 'awful'"),
    (["--grid", "--condition", "spinal_canal_stenosis"], "--grid needs --condition and --severity"),
    ([], "give --study ID"),
    (["--study", "{study}", "--points", "nowhere.csv"], "points file nowhere.csv does not exist"),
])
def test_bad_input_is_a_one_line_error(reader, synth_cache, tmp_path, capsys, args, message):
    study = str(reader.study_labels().study_id.iloc[0])
    out = tmp_path / "x.png"
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(synth_cache), *[a.format(study=study) for a in args], "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_sequence_the_study_lacks_is_a_user_error(reader):
    with pytest.raises(LumbarFastError, match="study 1 has no sag_t1 series"):
        show.study_sections(reader, 1, "sag_t1", None)


def test_a_sheet_of_every_sequence_names_those_the_study_lacks(reader):
    study = int(reader.study_labels().study_id.iloc[0])
    has = [seq for seq in reader.sequences() if (reader.stack_index(seq).study_id == study).any()]
    title = show.study_sheet(reader, study)[0].texts[0][2]
    lacking = [rsna.SEQUENCES[seq].description for seq in rsna.SEQUENCES if seq not in has]
    assert title.endswith(f"; no {', '.join(lacking)} series") if lacking else title.endswith(show.LEGEND)
    title = show.study_sheet(reader, study, has[:1])[0].texts[0][2]  # one asked for: nothing to say
    assert title.endswith(show.LEGEND)


def test_conditions_in_any_case_and_png_paths_only(synth_cache, tmp_path, capsys):
    assert show.parse_condition("Spinal_Canal_Stenosis") == show.parse_condition("spinal canal stenosis") \
        == "spinal_canal_stenosis"
    with pytest.raises(SystemExit) as exit_info:  # PNG bytes in a .jpg file
        main(["show", str(synth_cache), "--grid", "--condition", "spinal_canal_stenosis", "--severity",
              "Severe", "--out", str(tmp_path / "grid.jpg")])
    assert exit_info.value.code == 2 and "give a path ending in .png" in capsys.readouterr().err
    assert not (tmp_path / "grid.jpg").exists()
