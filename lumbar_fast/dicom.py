"""Reading DICOM: one file to a float image with its geometry, one series to spatially ordered stacks, and
the per-series intensity window, resize and millimetre crops that ingest applies to them.

Geometry follows docs/architecture.md: a slice's position is `dot(ImagePositionPatient, normal)` with
`normal = ±cross(row_cosines, col_cosines)`, signed to point to the patient's left, back or head (whichever
axis it is nearest); stacks group slices of one ImageOrientationPatient and are ordered by ascending
position, never by InstanceNumber — so a stack runs the same way through the patient however it was
acquired (a sagittal stack always from the right to the left side).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

#: largest per-component difference of ImageOrientationPatient cosines inside one stack (~0.06°: stacks
#: of one scanner session repeat their IOP exactly, differently angled stacks differ by degrees)
ORIENTATION_TOLERANCE = 1e-3
#: robust intensity window: these percentiles of a series' pixels map to 0 and 255
WINDOW_PERCENTILES = (0.5, 99.5)
#: about this many pixels per series are sampled to find the window (a full sort per series is slow)
WINDOW_SAMPLES = 200_000
#: ITU-R BT.601 luma weights, for the rare colour image in an MR series
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class DicomReadError(Exception):
    """A file that cannot be used as an image slice; the message is the reason recorded by ingest."""


@dataclass
class DicomSlice:
    """One decoded image: rescaled float pixels (MONOCHROME1 already inverted) and its plane geometry."""

    path: Path
    instance_number: int
    pixels: np.ndarray  # (rows, cols) float32
    orientation: np.ndarray  # ImageOrientationPatient: row cosines (3) then column cosines (3)
    position: np.ndarray  # ImagePositionPatient (3)
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns (mm)

    @property
    def normal(self) -> np.ndarray:
        """The slice normal, signed to point along +x, +y or +z of DICOM's patient axes (left, posterior,
        head), whichever it is nearest: the IOP's own handedness depends on how the series was acquired."""
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        return -normal if normal[np.argmax(np.abs(normal))] < 0 else normal

    @property
    def location(self) -> float:
        """Position along the slice normal (mm): the sort key of a stack."""
        return float(self.position @ self.normal)


@dataclass
class Stack:
    """Slices of one orientation in ascending position along their normal."""

    slices: list[DicomSlice]

    def slice_of_instance(self) -> dict[int, int]:
        return {s.instance_number: i for i, s in enumerate(self.slices)}


@dataclass
class SeriesScan:
    """A series folder read: its stacks, and every file that could not be used with the reason."""

    stacks: list[Stack] = field(default_factory=list)
    errors: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def slices(self) -> list[DicomSlice]:
        return [s for stack in self.stacks for s in stack.slices]

    def find_instance(self, instance_number: int) -> tuple[int, int] | None:
        """(stack, slice) of an instance number, or None when the series has no such usable instance."""
        for stack_id, stack in enumerate(self.stacks):
            index = stack.slice_of_instance().get(instance_number)
            if index is not None:
                return stack_id, index
        return None


def decode_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The modality values of a single-frame image as float32 (rows, cols): stored values, MONOCHROME1
    inverted within the stored range, then RescaleSlope/Intercept; colour images become luma."""
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomReadError(f"multi-frame image ({ds.NumberOfFrames} frames) is not a slice")
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom and its decoders raise many types for damaged pixel data
        raise DicomReadError(f"pixel data cannot be decoded: {_first_line(exc)}") from exc
    if stored.ndim == 3:
        return (stored.astype(np.float32) @ LUMA).astype(np.float32)
    pixels = stored.astype(np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        low, high = _stored_range(ds)
        pixels = (low + high) - pixels
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        pixels = pixels * np.float32(slope) + np.float32(intercept)
    return pixels


def read_slice(path: Path) -> DicomSlice:
    """Read and decode one DICOM file with its geometry; DicomReadError says why a file is unusable."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # truncated / garbage files fail anywhere in the parser
        raise DicomReadError(f"not a readable DICOM file: {_first_line(exc)}") from exc
    if "PixelData" not in ds:
        raise DicomReadError("no pixel data (not an image, or cut short)")
    missing = [tag for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
               if tag not in ds]
    if missing:
        raise DicomReadError(f"no {', '.join(missing)}")
    return DicomSlice(
        path=Path(path),
        instance_number=_instance_number(ds, Path(path)),
        pixels=decode_pixels(ds),
        orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64),
        position=np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64),
        spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
    )


def split_stacks(slices: Iterable[DicomSlice]) -> list[Stack]:
    """Group slices by orientation (stacks numbered by their lowest instance number) and order each stack
    by position along its normal (instance number only breaks exact ties)."""
    groups: list[list[DicomSlice]] = []
    for item in sorted(slices, key=lambda s: (s.instance_number, str(s.path))):
        for group in groups:
            if np.abs(group[0].orientation - item.orientation).max() <= ORIENTATION_TOLERANCE:
                group.append(item)
                break
        else:
            groups.append([item])
    return [Stack(sorted(group, key=lambda s: (s.location, s.instance_number))) for group in groups]


def read_series(folder: Path) -> SeriesScan:
    """Read every `*.dcm` of a series folder into ordered stacks; unusable files go to `errors`."""
    scan = SeriesScan()
    slices = []
    for path in sorted(Path(folder).glob("*.dcm")):
        try:
            slices.append(read_slice(path))
        except DicomReadError as exc:
            scan.errors.append((path, str(exc)))
    scan.stacks = split_stacks(slices)
    return scan


def series_window(slices: list[DicomSlice]) -> tuple[float, float]:
    """The (low, high) intensity window of a series: WINDOW_PERCENTILES of a strided pixel subsample."""
    total = sum(s.pixels.size for s in slices)
    step = max(1, int(np.sqrt(total / WINDOW_SAMPLES)))
    sample = np.concatenate([s.pixels[::step, ::step].ravel() for s in slices])
    low, high = (float(v) for v in np.percentile(sample, WINDOW_PERCENTILES))
    return low, (high if high > low else low + 1.0)


def to_uint8(pixels: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Map the window linearly onto 0..255, clipping outside it."""
    low, high = window
    scaled = pixels - np.float32(low)
    scaled *= np.float32(255.0 / (high - low))
    scaled += np.float32(0.5)
    return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """A whole uint8 slice resized to size×size (an integer box reduction first, then bilinear: ~2× faster
    than antialiased bilinear alone): (x, y) maps to (x·size/cols, y·size/rows)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=1.0))


def crop_mm(image: np.ndarray, x: float, y: float, spacing: tuple[float, float], width_mm: float,
            size: int) -> np.ndarray:
    """A square window of `width_mm` millimetres centred on pixel (x, y) (column, row; pixel centres at
    integers), resampled bilinearly from the original pixels into size×size, zero outside the image."""
    width_px, height_px = width_mm / spacing[1], width_mm / spacing[0]
    left, top = x + 0.5 - width_px / 2, y + 0.5 - height_px / 2  # Pillow's continuous coordinates
    rows, cols = image.shape
    pad = max(0, int(np.ceil(max(-left, -top, left + width_px - cols, top + height_px - rows))) + 2)
    if pad:
        image = np.pad(image, pad)
    box = (left + pad, top + pad, left + pad + width_px, top + pad + height_px)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box))


def neighbour_indices(index: int, count: int, channels: int) -> list[int]:
    """Slice indices of a 2.5D item: `channels` (odd) slices centred on `index`, edges repeated."""
    half = channels // 2
    return [min(max(index + offset, 0), count - 1) for offset in range(-half, half + 1)]


def level_crop(images: list[np.ndarray], index: int, x: float, y: float, spacing: tuple[float, float],
               width_mm: float, size: int, channels: int) -> np.ndarray:
    """The (size, size, channels) crop around (x, y) of slice `index` of a stack's uint8 `images` and its
    neighbours in ascending position, the labelled slice in the middle channel."""
    planes = [crop_mm(images[i], x, y, spacing, width_mm, size)
              for i in neighbour_indices(index, len(images), channels)]
    return np.stack(planes, axis=-1)


def _instance_number(ds: pydicom.Dataset, path: Path) -> int:
    """InstanceNumber, or the file name's number (RSNA names files by it) when the tag is absent; else -1."""
    if ds.get("InstanceNumber") not in (None, ""):
        return int(ds.InstanceNumber)
    return int(path.stem) if path.stem.isdigit() else -1


def _stored_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """The smallest and largest stored value BitsStored and PixelRepresentation allow."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
