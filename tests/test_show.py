"""`lumbar-fast show`: pictures render as PNGs of the planned size, and markers sit where labels map."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from lumbar_fast import show
from lumbar_fast.errors import LumbarFastError


def colour_centroids(png_path, colour) -> np.ndarray:
    """(x, y) centroids of the connected blobs of exactly `colour` in a PNG, in pixel-centre coordinates."""
    pixels = np.asarray(Image.open(png_path).convert("RGB"))
    blobs, count = ndimage.label(np.all(pixels == colour, axis=-1), structure=np.ones((3, 3)))
    centres = ndimage.center_of_mass(np.ones(blobs.shape), blobs, range(1, count + 1))
    return np.array([(x + 0.5, y + 0.5) for y, x in centres]).reshape(-1, 2)


def assert_blob_at(png_path, colour, x: float, y: float, tolerance: float = 1.5) -> None:
    """A blob of `colour` is centred within `tolerance` px of (x, y)."""
    centres = colour_centroids(png_path, colour)
    assert len(centres), f"no {colour} marker in {png_path}"
    distance = np.hypot(*(centres - (x, y)).T).min()
    assert distance <= tolerance, f"nearest {colour} marker is {distance:.1f} px from ({x:.1f}, {y:.1f})"


def test_stack_mapping_is_the_contracts():
    # (x · S / cols, y · S / rows): a 200-column, 400-row instance resized to 224×224
    assert show.to_stack_pixels(100, 50, rows=400, cols=200, size=224) == (112.0, 28.0)


def test_marker_labels_name_level_and_side():
    assert show.marker_label("Spinal Canal Stenosis", "L4/L5") == "L4/L5"
    assert show.marker_label("left_neural_foraminal_narrowing", "l5_s1") == "L5/S1 L"
    assert show.marker_label("Right Subarticular Stenosis", "L1/L2") == "L1/L2 R"


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
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.size == (2 * show.MARGIN + columns * tile + (columns - 1) * show.GAP,
                            2 * show.MARGIN + show.HEADER + 2 * row_height - show.GAP)
    for i, item in enumerate(items):
        h, w = shapes[i]
        left = show.MARGIN + (i % columns) * (tile + show.GAP)
        top = show.MARGIN + show.HEADER + (i // columns) * row_height
        marker = item.markers[0]
        expected = (left + marker.x * tile / w, top + marker.y * tile / h)
        assert picture.drawn[i][1:] == pytest.approx(expected)
        assert_blob_at(out, show.MARKER_COLOURS[marker.kind], *expected)


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
