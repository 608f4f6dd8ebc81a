"""Reading DICOM: one file to a float image with its geometry, one series to spatially ordered stacks, and
the per-series intensity window, resize and millimetre crops that ingest applies to them.

Geometry follows docs/architecture.md: a slice's position is `dot(ImagePositionPatient, normal)` with
`normal = ±cross(row_cosines, col_cosines)`, signed to point to the patient's left, back or head (whichever
axis it is nearest); stacks group slices of one ImageOrientationPatient and are ordered by ascending
position, never by InstanceNumber — so a stack runs the same way through the patient however it was
acquired (a sagittal stack always from the right to the left side).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.uid import RLELossless
from rle.utils import decode_segment

from lumbar_fast.errors import NOT_A_FAILURE, typed_line
from lumbar_fast.header import (
    DicomReadError,
    ImageHeader,
    check_frame_length,
    check_geometry,
    check_image,
    check_instance_number,
)

#: largest per-component difference of ImageOrientationPatient cosines inside one stack (~0.06°: stacks
#: of one scanner session repeat their IOP exactly, differently angled stacks differ by degrees)
ORIENTATION_TOLERANCE = 1e-3
#: robust intensity window: these percentiles of a series' pixels map to 0 and 255
WINDOW_PERCENTILES = (0.5, 99.5)
#: about this many pixels per series are sampled to find the window (a full sort per series is slow)
WINDOW_SAMPLES = 200_000
#: ITU-R BT.601 luma weights, for the rare colour image in an MR series
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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
    inverted within the stored range, then RescaleSlope/Intercept; colour images become luma. The header is
    checked first (`header.check_image`), the decoded array against it after."""
    return _decode(ds, check_image(ds))


def read_slice(path: Path) -> DicomSlice:
    """Read, check and decode one DICOM file with its geometry; DicomReadError says why a file is unusable."""
    path = Path(path)
    with warnings.catch_warnings():
        # every problem that matters is a DicomReadError; pydicom's warnings (one per bad value of every
        # file) would only flood the console
        warnings.simplefilter("ignore")
        return dataset_slice(_read_file(path), path)


def dataset_slice(ds: pydicom.Dataset, path: Path) -> DicomSlice:
    """The checked, decoded slice of a dataset read from `path` (which gives the instance number when the
    header has none): the image header, then the geometry, then the pixels."""
    image = check_image(ds)
    geometry = check_geometry(ds)
    return DicomSlice(path=path, instance_number=_instance_number(ds, path), pixels=_decode(ds, image),
                      orientation=geometry.orientation, position=geometry.position, spacing=geometry.spacing)


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
        except NOT_A_FAILURE:
            raise
        except BaseException as exc:  # a case no check foresaw: still this file's problem alone
            scan.errors.append((path, f"unexpected error: {typed_line(exc)}"))
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


def _read_file(path: Path) -> pydicom.Dataset:
    """The dataset of one file; DicomReadError for a folder, a link to nothing, an empty or unreadable file
    or what pydicom cannot parse."""
    if path.is_dir():
        raise DicomReadError("a folder, not a DICOM file")
    if path.is_symlink() and not path.exists():
        raise DicomReadError(f"a symbolic link to nothing ({os.readlink(path)})")
    if path.stat().st_size == 0:
        raise DicomReadError("empty file (0 bytes)")
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:  # pydicom's message suggests force=True, which would not make it an image
        raise DicomReadError("not a DICOM file: no 'DICM' prefix and no File Meta Information") from None
    except Exception as exc:  # truncated / garbage files fail anywhere in the parser
        raise DicomReadError(f"not a readable DICOM file: {typed_line(exc)}") from exc


def _decode(ds: pydicom.Dataset, image: ImageHeader) -> np.ndarray:
    """decode_pixels for a checked header: the stored array must have the header's shape (and an RLE
    segment its Rows × Columns bytes: RLE, unlike the JPEG codecs, records no image size of its own)."""
    stored = native_pixels(ds.PixelData, image) if is_native_grey(image) else _pixel_array(ds, image)
    if stored.shape != image.shape:
        raise DicomReadError(f"pixel data cannot be decoded: {stored.shape} pixels, the header says "
                             f"{image.shape}")
    if image.transfer_syntax == RLELossless:
        _check_rle_size(ds, image)
    if stored.ndim == 3:
        return (stored.astype(np.float32) @ LUMA).astype(np.float32)
    pixels = stored.astype(np.float32)
    if image.photometric == "MONOCHROME1":
        low, high = _stored_range(image)
        pixels = (low + high) - pixels
    if image.slope != 1 or image.intercept != 0:
        pixels = pixels * np.float32(image.slope) + np.float32(image.intercept)
    if not np.isfinite(pixels).all():
        raise DicomReadError(f"pixel values overflow float32 after RescaleSlope {image.slope:g} and "
                             f"RescaleIntercept {image.intercept:g}")
    return pixels


def is_native_grey(image: ImageHeader) -> bool:
    """Whether the pixel data is one uncompressed little-endian integer of 8, 16 or 32 bits per pixel: the
    layout of nearly every MR slice stored without compression, which `native_pixels` reads."""
    return (not image.transfer_syntax.is_encapsulated and image.transfer_syntax.is_little_endian
            and image.samples == 1 and image.bits_allocated in (8, 16, 32))


def native_pixels(data: bytes, image: ImageHeader) -> np.ndarray:
    """The stored values of a native grey frame (PS3.5 8.1.1, `is_native_grey`): one integer of
    BitsAllocated bits per pixel, its bits above BitsStored ignored (a signed value sign-extended from bit
    BitsStored - 1), any zero padding after the frame left out. The array pydicom's pixel_array gives, read
    without its decoder's set-up, which costs a 96-pixel slice a third of its read (0.45 of 1.3 ms)."""
    kind = "i" if image.signed else "u"
    stored = np.frombuffer(data, f"<{kind}{image.bits_allocated // 8}", count=image.rows * image.columns)
    stored = stored.reshape(image.rows, image.columns)
    unused = image.bits_allocated - image.bits_stored
    return (stored << unused) >> unused if unused else stored


def _pixel_array(ds: pydicom.Dataset, image: ImageHeader) -> np.ndarray:
    """pydicom's pixel_array, with any zero padding after an uncompressed frame dropped first (pydicom
    reads a frame's worth of padding as a second frame)."""
    if not image.transfer_syntax.is_encapsulated and len(ds.PixelData) > image.frame_bytes:
        ds.PixelData = ds.PixelData[:image.frame_bytes]  # zero padding: header.check_size made sure
    try:
        return ds.pixel_array
    except NOT_A_FAILURE:
        raise
    except BaseException as exc:  # pydicom's decoders raise many types for damaged data; the Rust ones panic
        raise DicomReadError(f"pixel data cannot be decoded: {typed_line(exc)}") from exc


def _check_rle_size(ds: pydicom.Dataset, image: ImageHeader) -> None:
    """An RLE segment holds one byte per pixel: Rows × Columns of them, then at most zero padding."""
    check_frame_length(_rle_segment(ds), image.rows * image.columns, "RLE segments of ",
                       f"Rows {image.rows} × Columns {image.columns}")


def _rle_segment(ds: pydicom.Dataset) -> bytes:
    """One decoded segment of an RLE frame (every segment holds one byte per pixel): the shortest, whose
    long runs decode fastest. The frame's header is a segment count, then 15 offsets."""
    try:
        frame = get_frame(ds.PixelData, 0, number_of_frames=1)
        header = np.frombuffer(frame[:64], dtype="<u4")
        bounds = [*(int(v) for v in header[1:1 + min(int(header[0]), 15)]), len(frame)]
        start, end = min(pairwise(bounds), key=lambda pair: pair[1] - pair[0])
        return bytes(decode_segment(frame[start:end]))
    except NOT_A_FAILURE:
        raise
    except BaseException as exc:  # a header that lists no segment, or a damaged segment (a Rust panic)
        raise DicomReadError(f"pixel data cannot be decoded: {typed_line(exc)}") from exc


def _instance_number(ds: pydicom.Dataset, path: Path) -> int:
    """InstanceNumber, or the file name's number (RSNA names files by it) when the tag is absent; else -1."""
    number = check_instance_number(ds)
    if number is not None:
        return number
    return int(path.stem) if path.stem.isdigit() else -1


def _stored_range(image: ImageHeader) -> tuple[float, float]:
    """The smallest and largest stored value BitsStored and PixelRepresentation allow."""
    bits = image.bits_stored
    if image.signed:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1
