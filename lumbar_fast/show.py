"""Contact sheets and grids (PNG): look at what the cache and the models see.

A wrong slice order, a crop off its level or a flipped side is obvious in a picture and invisible in a table.
Pictures are drawn with Pillow on a fixed pixel grid (no display, no DPI guesswork), so a sheet's size and
every marker's position are exact and testable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from lumbar_fast import rsna
from lumbar_fast.cache import CacheReader
from lumbar_fast.csvfile import FLOAT, INT, read_csv
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.rsna import severity_name
from lumbar_fast.runfolder import atomic_write

#: side of one drawn image on a contact sheet / a gallery, px
SHEET_TILE = 112
GALLERY_TILE = 160
GAP = 4
MARGIN = 8
FONT_PX = 10
LINE = 12
HEADER = 20
#: stack thumbnails per row on a contact sheet; fixes the sheet's width
SHEET_COLUMNS = 12
SHEET_WIDTH = 2 * MARGIN + SHEET_COLUMNS * SHEET_TILE + (SHEET_COLUMNS - 1) * GAP

BACKGROUND = (20, 20, 20)
TEXT = (235, 235, 235)
TITLE_TEXT = (120, 200, 255)
#: marker colours are pure (no anti-aliasing touches them), so they can be found again by colour
MARKER_COLOURS = {"label": (255, 0, 0), "points": (0, 255, 0)}
MARKER_TEXT = {"label": (255, 255, 0), "points": (160, 255, 160)}
MARKER_RADIUS = 3
LEGEND = "captions #slice i<instance number>; red dot: labelled point"
POINTS_LEGEND = "; green cross: --points"

#: columns a --points file needs (train_label_coordinates.csv format; condition and level name the marker)
POINT_COLUMNS = {"study_id": INT, "series_id": INT, "instance_number": INT, "x": FLOAT, "y": FLOAT}


@dataclass(frozen=True)
class Marker:
    """A point drawn on a panel's images: (x, y) in pixels of those images, a short name, and its kind."""

    x: float
    y: float
    label: str
    kind: str = "label"  # "label" (the cache's labelled points) | "points" (a --points file)
    name_left: bool = False  # name on the image-left of the point (the patient's right on an axial image)


@dataclass(frozen=True)
class Panel:
    """Images side by side (2-D uint8, drawn as square tiles), caption lines under them, markers on them."""

    images: tuple[np.ndarray, ...]
    caption: tuple[str, ...]
    markers: tuple[Marker, ...] = ()


@dataclass(frozen=True)
class Section:
    """A titled run of panels, laid out left to right and wrapped at the sheet's width."""

    title: str
    panels: tuple[Panel, ...]


@dataclass
class Layout:
    """Where everything goes: text lines (x, y, text, colour), panels (panel, x, y) and the picture size."""

    tile: int
    size: tuple[int, int]
    texts: list[tuple[int, int, str, tuple[int, int, int]]] = field(default_factory=list)
    panels: list[tuple[Panel, int, int]] = field(default_factory=list)


@dataclass
class Picture:
    """A rendered picture and where each marker was drawn, in picture pixels (for checks and tests)."""

    image: Image.Image
    layout: Layout
    drawn: list[tuple[Marker, float, float]]


# ---- coordinates -------------------------------------------------------------------------------------


def to_stack_pixels(x: float, y: float, *, rows: int, cols: int, size: int) -> tuple[float, float]:
    """Map (x, y) in pixels of an original `cols` × `rows` instance onto its S×S stack image (contract)."""
    return x * size / cols, y * size / rows


def tile_point(marker: Marker, image_shape: tuple[int, ...], tile: int,
               origin: tuple[int, int]) -> tuple[float, float]:
    """Where `marker` lands on a picture when its image is drawn as a `tile`-px square at `origin`."""
    return origin[0] + marker.x * tile / image_shape[1], origin[1] + marker.y * tile / image_shape[0]


def level_marker(x: float, y: float, condition: object, level: object, kind: str) -> Marker:
    """A marker named by its level plus L or R for a sided condition ("L4/L5 R"); either CSV spelling."""
    level_name = rsna.LEVEL_FROM_TITLE.get(str(level), str(level))
    condition_name = rsna.CONDITION_FROM_TITLE.get(str(condition), str(condition))
    side = condition_name.split("_")[0] if condition_name in rsna.CONDITIONS else ""
    label = rsna.LEVEL_TITLES.get(level_name, "")
    if side in ("left", "right"):
        label = f"{label} {side[0].upper()}".strip()
    return Marker(x, y, label, kind, name_left=side == "right")


# ---- layout and drawing ------------------------------------------------------------------------------


def panel_size(panel: Panel, tile: int) -> tuple[int, int]:
    """Width and height of a panel: its tiles in a row, its caption lines under them."""
    n = len(panel.images)
    return n * tile + (n - 1) * GAP, tile + LINE * len(panel.caption)


def layout(sections: Sequence[Section], width: int, tile: int, title: str = "") -> Layout:
    """Place a title, then each section's title and its panels in rows that wrap at `width`."""
    result = Layout(tile=tile, size=(width, 0))
    y = MARGIN
    if title:
        result.texts.append((MARGIN, y, title, TEXT))
        y += HEADER
    for section in sections:
        if section.title:
            result.texts.append((MARGIN, y, section.title, TITLE_TEXT))
            y += HEADER
        x, row_height = MARGIN, 0
        for panel in section.panels:
            panel_width, panel_height = panel_size(panel, tile)
            if x > MARGIN and x + panel_width > width - MARGIN:
                x, y, row_height = MARGIN, y + row_height + GAP, 0
            result.panels.append((panel, x, y))
            x += panel_width + GAP
            row_height = max(row_height, panel_height)
        y += row_height + GAP
    result.size = (width, y - GAP + MARGIN)
    return result


@cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_PX)


def _fit(text: str, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels."""
    font = _font()
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _draw_marker_name(draw: ImageDraw.ImageDraw, marker: Marker, px: float, py: float, tile_left: int,
                      tile: int) -> None:
    """A marker's name beside it (right, or left if `name_left`), outlined in black, kept inside its tile."""
    width = _font().getlength(marker.label)
    gap = MARKER_RADIUS + 2
    x = px - gap - width if marker.name_left else px + gap
    x = min(max(x, tile_left), tile_left + tile - width)
    draw.text((x, py - LINE / 2), marker.label, fill=MARKER_TEXT[marker.kind], font=_font(),
              stroke_width=1, stroke_fill=(0, 0, 0))


def _draw_marker_shape(draw: ImageDraw.ImageDraw, marker: Marker, px: float, py: float) -> None:
    """A filled dot (labels) or a cross (points) in a pure, un-antialiased colour."""
    colour, r = MARKER_COLOURS[marker.kind], MARKER_RADIUS
    if marker.kind == "label":
        draw.ellipse((px - r, py - r, px + r, py + r), fill=colour)
    else:
        draw.line((px - r - 1, py - r - 1, px + r + 1, py + r + 1), fill=colour)
        draw.line((px - r - 1, py + r + 1, px + r + 1, py - r - 1), fill=colour)


def _named(marker: Marker, panel: Panel) -> bool:
    """Whether to write a marker's name: not for a --points marker beside a labelled one of that name."""
    return marker.kind == "label" or not any(
        other.kind == "label" and other.label == marker.label for other in panel.markers)


def draw(plan: Layout) -> Picture:
    """Render a layout: tiles resized to the tile size, captions, marker names, then markers on top."""
    picture = Picture(Image.new("RGB", plan.size, BACKGROUND), plan, [])
    canvas = ImageDraw.Draw(picture.image)
    for x, y, text, colour in plan.texts:
        canvas.text((x, y), _fit(text, plan.size[0] - x - MARGIN), fill=colour, font=_font())
    tile, names = plan.tile, []
    for panel, x, y in plan.panels:
        panel_width, _ = panel_size(panel, tile)
        for line, text in enumerate(panel.caption):
            canvas.text((x, y + tile + line * LINE), _fit(text, panel_width), fill=TEXT, font=_font())
        for i, image in enumerate(panel.images):
            origin = (x + i * (tile + GAP), y)
            thumbnail = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "L")
            picture.image.paste(thumbnail.resize((tile, tile), Image.Resampling.BILINEAR), origin)
            for marker in panel.markers:
                px, py = tile_point(marker, image.shape, tile, origin)
                picture.drawn.append((marker, px, py))
                if _named(marker, panel):
                    names.append((marker, px, py, origin[0]))
    for marker, px, py, tile_left in names:
        _draw_marker_name(canvas, marker, px, py, tile_left, tile)
    for marker, px, py in picture.drawn:
        _draw_marker_shape(canvas, marker, px, py)
    return picture


@cache
def _palette() -> np.ndarray:
    """256 RGB colours for saved pictures: the drawing colours, their blends towards black, then greys."""
    colours = (TITLE_TEXT, *MARKER_COLOURS.values(), *MARKER_TEXT.values())
    entries = [BACKGROUND] + [tuple(round(v * a) for v in c) for c in colours for a in (1, 0.75, 0.5, 0.25)]
    greys = np.linspace(0, 255, 256 - len(entries)).round().astype(int)
    return np.array(entries + [(g, g, g) for g in greys])


def _nearest_entries(colours: np.ndarray) -> np.ndarray:
    """Index of the nearest palette entry of each (r, g, b) row."""
    return ((colours[:, None, :] - _palette()[None]) ** 2).sum(axis=-1).argmin(axis=1)


def to_palette(image: Image.Image) -> Image.Image:
    """The picture in 8-bit palette mode, each colour mapped to its nearest palette entry (greys within 1).

    Half the bytes of RGB; exact, unlike Pillow's quantize, whose colour cube moves greys by up to 4 levels.
    """
    rgb = np.asarray(image.convert("RGB")).astype(np.int64)
    index = _nearest_entries(np.repeat(np.arange(256)[:, None], 3, axis=1))[rgb[..., 0]]  # greys: a lookup
    coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
    colours, inverse = np.unique(rgb[coloured], axis=0, return_inverse=True)
    index[coloured] = _nearest_entries(colours)[inverse.ravel()]
    result = Image.fromarray(index.astype(np.uint8), "P")
    result.putpalette(_palette().astype(np.uint8).ravel().tolist())
    return result


def save_png(picture: Picture, out_png: Path) -> None:
    """Write the picture as a palette PNG (see `to_palette`) in one step: never a torn file."""
    small = to_palette(picture.image)
    atomic_write(Path(out_png), lambda tmp: small.save(tmp, format="PNG"))


# ---- galleries (grid of one class; evaluate's worst predictions) --------------------------------------


def channels(crop: np.ndarray) -> tuple[np.ndarray, ...]:
    """The channels of an (S, S, C) level crop as C images, in the cache's order (ascending position)."""
    return tuple(crop[..., c] for c in range(crop.shape[-1]))


def prediction_caption(truth: int, probabilities: Sequence[float]) -> tuple[str, str]:
    """Two caption lines for a prediction: the true class and the predicted probabilities in class order."""
    return f"truth {severity_name(truth)}", "p " + " ".join(f"{p:.2f}" for p in probabilities)


def gallery_layout(items: Sequence[Panel], title: str = "", columns: int | None = None) -> Layout:
    """A square-ish grid of panels (ceil(sqrt(n)) per row unless `columns` is given) under one title."""
    if not items:
        raise LumbarFastError("nothing to draw: the gallery is empty")
    columns = columns or math.ceil(math.sqrt(len(items)))
    panel_width = max(panel_size(item, GALLERY_TILE)[0] for item in items)
    width = 2 * MARGIN + columns * panel_width + (columns - 1) * GAP
    return layout([Section("", tuple(items))], width, GALLERY_TILE, title)


def render_gallery(items: Sequence[Panel], out_png: Path, title: str = "",
                   columns: int | None = None) -> Picture:
    """Draw panels (images + caption lines, e.g. `prediction_caption`) as a grid and save it as a PNG."""
    picture = draw(gallery_layout(items, title, columns))
    save_png(picture, out_png)
    return picture


def parse_severity(text: str) -> int:
    """A severity given as a class id (0, 1, 2), a train.csv name ("Normal/Mild") or a submission column."""
    spellings = {str(i): i for i in range(len(rsna.SEVERITIES))}
    spellings |= {name.lower(): i for name, i in rsna.SEVERITY_FROM_NAME.items()}
    spellings |= {name: i for i, name in enumerate(rsna.SUBMISSION_COLUMNS)}
    try:
        return spellings[text.strip().lower()]
    except KeyError:
        raise LumbarFastError(
            f"unknown severity {text!r}; choose one of {', '.join(rsna.SEVERITIES)} (or 0, 1, 2)"
        ) from None


def parse_condition(text: str) -> str:
    """A condition given as a label-column name or its coordinates-CSV title, in any case."""
    titles = {title.casefold(): name for title, name in rsna.CONDITION_FROM_TITLE.items()}
    condition = titles.get(text.casefold(), text.casefold())
    if condition not in rsna.CONDITIONS:
        raise LumbarFastError(f"unknown condition {text!r}; choose one of {', '.join(rsna.CONDITIONS)}")
    return condition


def class_grid(reader: CacheReader, condition: str, severity: int, n: int,
               seed: int) -> tuple[list[Panel], str]:
    """`n` random level crops (labelled slice) of one condition and severity across studies, and a title."""
    seq = rsna.SEQUENCE_OF_CONDITION[condition]
    if seq not in reader.sequences():
        raise LumbarFastError(f"the cache has no {seq} level crops (needed for {condition})")
    labels = reader.level_labels(seq)
    rows = np.flatnonzero(((labels.condition == condition) & (labels.severity == severity)).to_numpy())
    if len(rows) == 0:
        raise LumbarFastError(f"the cache has no {condition} crops of severity {severity_name(severity)}")
    chosen = np.sort(np.random.default_rng(seed).choice(rows, size=min(n, len(rows)), replace=False))
    crops = _rows_of(reader, seq, "levels", chosen)
    panels = [
        Panel((crop[..., crop.shape[-1] // 2],),
              (f"study {label.study_id}", f"{rsna.LEVEL_TITLES[label.level]} slice {label.slice}"))
        for crop, label in zip(crops, labels.iloc[chosen].itertuples(), strict=True)
    ]
    title = (f"{rsna.CONDITION_TITLES[condition]}, {severity_name(severity)}: {len(chosen)} of {len(rows)} "
             f"crops (labelled slice), seed {seed}")
    return panels, title


# ---- one study's contact sheet ------------------------------------------------------------------------


def read_points(path: Path) -> pd.DataFrame:
    """A coordinates CSV in train_label_coordinates format (e.g. a locator's output) to draw with --points."""
    points = read_csv(path, POINT_COLUMNS, "points")
    for column in ("condition", "level"):
        if column not in points.columns:
            points[column] = ""
    return points


def _rows_of(reader: CacheReader, seq: str, kind: str, rows: np.ndarray) -> np.ndarray:
    """Only the given rows of a cache array (a study's slices), read from the memory-mapped .npy copy."""
    return np.load(reader.array_path(seq, kind), mmap_mode="r")[np.asarray(rows)]


def _stack_panels(stack: pd.DataFrame, images: np.ndarray,
                  markers: dict[int, list[Marker]]) -> tuple[Panel, ...]:
    """One panel per slice of a stack, in order, captioned with slice index and instance number."""
    return tuple(
        Panel((image,), (f"#{row.slice} i{row.instance_number}",), tuple(markers.get(row.Index, ())))
        for image, row in zip(images, stack.itertuples(), strict=True)
    )


def _markers_by_row(points: pd.DataFrame, index: pd.DataFrame, rows: Iterable[int], kind: str,
                    size: int) -> dict[int, list[Marker]]:
    """Markers of `points` (one per entry of `rows`, a stack_index row or -1 when off the cache) by row."""
    result: dict[int, list[Marker]] = {}
    for point, row in zip(points.itertuples(), rows, strict=True):
        if row < 0:
            continue
        image = index.loc[row]
        x, y = to_stack_pixels(point.x, point.y, rows=image["rows"], cols=image["cols"], size=size)
        result.setdefault(row, []).append(level_marker(x, y, point.condition, point.level, kind))
    return result


def _point_rows(points: pd.DataFrame, index: pd.DataFrame) -> np.ndarray:
    """The stack_index row of each point's (series, instance), or -1 where `index` has no such slice."""
    keys = index[["series_id", "instance_number"]].assign(row=index.index)
    keys = keys.drop_duplicates(["series_id", "instance_number"])
    merged = points[["series_id", "instance_number"]].merge(keys, how="left")
    return merged["row"].fillna(-1).astype(np.int64).to_numpy()


def _crop_panels(labels: pd.DataFrame, crops: np.ndarray, stack_lengths: pd.Series) -> tuple[Panel, ...]:
    """One panel per level crop: its channels side by side, captioned condition, level, severity, slices."""
    panels = []
    for crop, label in zip(crops, labels.itertuples(), strict=True):
        half, last = crop.shape[-1] // 2, stack_lengths[(label.series_id, label.stack)] - 1
        slices = [min(max(label.slice + c - half, 0), last) for c in range(crop.shape[-1])]
        caption = (f"{rsna.CONDITION_TITLES[label.condition]} {rsna.LEVEL_TITLES[label.level]}",
                   f"{severity_name(label.severity)}, slices {' '.join(map(str, slices))}")
        panels.append(Panel(channels(crop), caption))
    return tuple(panels)


def study_sections(reader: CacheReader, study_id: int, seq: str,
                   points: pd.DataFrame | None) -> list[Section]:
    """One sequence of a study: a section per stack (slices in order, points on them), one of level crops."""
    index = reader.stack_index(seq)
    study_index = index[index.study_id == study_id].sort_values(["series_id", "stack", "slice"])
    if study_index.empty:
        raise LumbarFastError(f"study {study_id} has no {seq} series in the cache")
    images = _rows_of(reader, seq, "stacks", study_index.index.to_numpy())
    size = images.shape[-1]
    all_labels = reader.level_labels(seq)
    labels = all_labels[all_labels.study_id == study_id]
    markers = _markers_by_row(labels, index, labels.stack_row.to_numpy(), "label", size)
    if points is not None:
        rows = _point_rows(points, study_index)
        for row, found in _markers_by_row(points, index, rows, "points", size).items():
            markers.setdefault(row, []).extend(found)
    description = rsna.SEQUENCES[seq].description
    sections = []
    for (series_id, stack), rows in study_index.groupby(["series_id", "stack"], sort=True):
        positions = study_index.index.get_indexer(rows.index)
        sections.append(Section(f"{description}, series {series_id}, stack {stack}: {len(rows)} slices",
                                _stack_panels(rows, images[positions], markers)))
    if not labels.empty:
        labels = labels.assign(order=labels.condition.map(rsna.CONDITIONS.index) * 10
                               + labels.level.map(rsna.LEVELS.index)).sort_values("order")
        crops = _rows_of(reader, seq, "levels", labels.index.to_numpy())
        lengths = study_index.groupby(["series_id", "stack"]).size()
        sections.append(Section(f"{description}: level crops, channels = neighbouring slices in order",
                                _crop_panels(labels, crops, lengths)))
    return sections


def study_sheet(reader: CacheReader, study_id: int, sequences: Sequence[str] = (),
                points: pd.DataFrame | None = None) -> tuple[Layout, int]:
    """The contact sheet of one study over `sequences` (default: all it has), and how many of the study's
    `points` match no cached slice (series, instance) at all."""
    if study_id not in set(reader.study_labels().study_id):
        raise LumbarFastError(f"study {study_id} is not in the cache {reader.path}")
    for seq in sequences:
        rsna.get_sequence(seq)
        if seq not in reader.sequences():
            raise LumbarFastError(f"the cache has no {seq} stacks (it has {', '.join(reader.sequences())})")
    chosen = bool(sequences)
    if not sequences:
        sequences = [s for s in reader.sequences() if (reader.stack_index(s).study_id == study_id).any()]
        if not sequences:
            raise LumbarFastError(f"study {study_id} has no series in the cache")
    if points is not None:
        points = points[points.study_id == study_id]
    sections = [section for seq in sequences for section in study_sections(reader, study_id, seq, points)]
    unplaced = 0 if points is None else int((_point_rows(points, _cached_slices(reader)) < 0).sum())
    absent = [] if chosen else [rsna.SEQUENCES[s].description for s in rsna.SEQUENCES if s not in sequences]
    title = (f"study {study_id}: {LEGEND}{POINTS_LEGEND if points is not None else ''}"
             + (f"; no {', '.join(absent)} series" if absent else ""))
    return layout(sections, SHEET_WIDTH, SHEET_TILE, title), unplaced


def _cached_slices(reader: CacheReader) -> pd.DataFrame:
    """(series_id, instance_number) of every cached slice, all sequences."""
    slices = [reader.stack_index(seq)[["series_id", "instance_number"]] for seq in reader.sequences()]
    return pd.concat(slices, ignore_index=True)
