"""Checks of the DICOM header fields ingest relies on, before a pixel is decoded: each wrong field is refused
with its own one-line reason in pydicom's style (the tag, its name, what is wrong); docs/input.md lists the
rules and tolerances.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom import uid
from pydicom.datadict import dictionary_description
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

from lumbar_fast.errors import typed_line

#: largest |‖v‖ - 1| of ImageOrientationPatient's row and column cosines: scanners write them rounded to a
#: few decimals (4 decimals put a unit vector within 2e-4 of length 1)
UNIT_TOLERANCE = 0.01
#: largest |row · column| of ImageOrientationPatient, the cosine of their angle: 0.01 is 90° ± 0.57°
ORTHOGONAL_TOLERANCE = 0.01
#: the transfer syntaxes ingest decodes (tests/test_dicom.py decodes a file of each)
SUPPORTED_TRANSFER_SYNTAXES = (
    uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian,
    uid.DeflatedExplicitVRLittleEndian, uid.RLELossless, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit,
    uid.JPEGLossless, uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless,
    uid.JPEG2000,
)
#: PhotometricInterpretation -> the SamplesPerPixel it needs (colour images become luma)
PHOTOMETRIC_SAMPLES = {"MONOCHROME1": 1, "MONOCHROME2": 1, "RGB": 3, "YBR_FULL": 3, "YBR_FULL_422": 3,
                       "YBR_RCT": 3, "YBR_ICT": 3}
BITS_ALLOCATED = (1, 8, 16, 32)
POSITIVE = range(1, 2 ** 31)


class DicomReadError(Exception):
    """A file that cannot be used as an image slice; the message is the reason recorded by ingest."""


@dataclass(frozen=True)
class ImageHeader:
    """The checked image pixel module of one file: what decoding needs and what its result must match."""

    transfer_syntax: uid.UID
    rows: int
    columns: int
    samples: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    signed: bool
    slope: float
    intercept: float

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape pydicom's pixel_array must have."""
        return (self.rows, self.columns) if self.samples == 1 else (self.rows, self.columns, self.samples)

    @property
    def frame_bytes(self) -> int:
        """Bytes of one uncompressed frame (1-bit pixels packed 8 to a byte; YBR_FULL_422 stores two samples
        per pixel: its chroma is shared by pairs of pixels)."""
        samples = 2 if self.photometric == "YBR_FULL_422" else self.samples
        return -(-self.rows * self.columns * samples * self.bits_allocated // 8)


@dataclass(frozen=True)
class Geometry:
    """The checked plane geometry of one file."""

    orientation: np.ndarray  # row cosines (3) then column cosines (3)
    position: np.ndarray  # (3) mm
    spacing: tuple[float, float]  # between rows, between columns (mm)


def check_image(ds: pydicom.Dataset) -> ImageHeader:
    """The image pixel module of `ds`, checked field by field and against the size of its pixel data."""
    if "PixelData" not in ds:
        raise DicomReadError("no pixel data (not an image, or cut short)")
    syntax = check_transfer_syntax(ds)
    frames = 1 if _raw(ds, "NumberOfFrames") is None else _integer(ds, "NumberOfFrames")
    if frames != 1:
        raise DicomReadError(f"multi-frame image ({frames} frames) is not a slice")
    photometric = _text(ds, "PhotometricInterpretation", PHOTOMETRIC_SAMPLES)
    samples = _integer(ds, "SamplesPerPixel", allowed=(1, 3))
    if samples != PHOTOMETRIC_SAMPLES[photometric]:
        raise _invalid("SamplesPerPixel", f"{samples} does not fit PhotometricInterpretation {photometric} "
                                          f"(needs {PHOTOMETRIC_SAMPLES[photometric]})")
    bits_allocated = _integer(ds, "BitsAllocated", allowed=BITS_ALLOCATED)
    image = ImageHeader(
        transfer_syntax=syntax, rows=_integer(ds, "Rows"), columns=_integer(ds, "Columns"), samples=samples,
        photometric=photometric, bits_allocated=bits_allocated,
        bits_stored=_integer(ds, "BitsStored", allowed=range(1, bits_allocated + 1)),
        signed=_integer(ds, "PixelRepresentation", allowed=(0, 1)) == 1,
        slope=_rescale(ds, "RescaleSlope", 1.0), intercept=_rescale(ds, "RescaleIntercept", 0.0),
    )
    if not syntax.is_encapsulated:
        check_size(bytes(_raw(ds, "PixelData") or b""), image)
    return image


def check_transfer_syntax(ds: pydicom.Dataset) -> uid.UID:
    """The file's transfer syntax, when it is one ingest decodes."""
    syntax = getattr(ds, "file_meta", pydicom.Dataset()).get("TransferSyntaxUID")
    if not syntax:
        raise DicomReadError(f"missing {_label('TransferSyntaxUID')} in the file meta")
    if syntax not in SUPPORTED_TRANSFER_SYNTAXES:
        name = syntax.name if syntax.is_transfer_syntax else "unknown"
        raise DicomReadError(f"unsupported transfer syntax: {name} ({syntax})")
    return syntax


def check_size(data: bytes, image: ImageHeader) -> None:
    """Uncompressed pixel data must hold one frame of the header's size. Bytes beyond it are padding when
    they are all zero (every reader drops them); data there means Rows/Columns lost part of the image."""
    check_frame_length(data, image.frame_bytes, "", _frame_size(image))


def check_frame_length(data: bytes, expected: int, what: str, size: str) -> None:
    """`data` holds `expected` bytes, then only zero padding; else a one-line error naming `what` ("" for
    the pixel data itself) and the header fields (`size`) that ask for `expected` bytes."""
    if len(data) >= expected and not data[expected:].strip(b"\0"):
        return
    extra = len(data) - expected
    detail = f", and the {extra} beyond them are not zero padding" if extra > 0 else ""
    raise DicomReadError(f"pixel data does not match the header: {what}{len(data)} bytes, but {size} "
                         f"need {expected}{detail}")


def _frame_size(image: ImageHeader) -> str:
    return (f"Rows {image.rows} × Columns {image.columns} × SamplesPerPixel {image.samples} × BitsAllocated "
            f"{image.bits_allocated}")


def check_geometry(ds: pydicom.Dataset) -> Geometry:
    """PixelSpacing (two positive finite numbers), ImageOrientationPatient (two near-unit, near-orthogonal
    cosine vectors) and ImagePositionPatient (three finite numbers)."""
    spacing = _numbers(ds, "PixelSpacing", 2)
    if (spacing <= 0).any():
        raise _invalid("PixelSpacing", f"{_show(spacing)} is not positive")
    orientation = _numbers(ds, "ImageOrientationPatient", 6)
    row, column = orientation[:3], orientation[3:]
    for name, vector in (("row", row), ("column", column)):
        length = float(np.linalg.norm(vector))
        if abs(length - 1) > UNIT_TOLERANCE:
            raise _invalid("ImageOrientationPatient", f"{name} cosines have length {length:.4g}, not 1 "
                                                     f"(± {UNIT_TOLERANCE:g})")
    cosine = float(row @ column)
    if abs(cosine) > ORTHOGONAL_TOLERANCE:
        raise _invalid("ImageOrientationPatient", f"row and column cosines are not orthogonal (dot product "
                                                 f"{cosine:.4g}, ± {ORTHOGONAL_TOLERANCE:g} allowed)")
    position = _numbers(ds, "ImagePositionPatient", 3)
    return Geometry(orientation, position, (float(spacing[0]), float(spacing[1])))


def check_instance_number(ds: pydicom.Dataset) -> int | None:
    """InstanceNumber as an integer, or None when the file has none."""
    return None if _raw(ds, "InstanceNumber") is None else _integer(ds, "InstanceNumber", allowed=None)


def _raw(ds: pydicom.Dataset, keyword: str) -> object | None:
    """The value of `keyword`, None when it is absent or empty."""
    tag = _tag(keyword)
    try:
        value = ds[tag].value if tag in ds else None
    except Exception as exc:  # pydicom converts raw values lazily and raises many types for bad bytes
        raise _invalid(keyword, f"cannot be read ({typed_line(exc)})") from exc
    if isinstance(value, (str, bytes, list, tuple, MultiValue)) and len(value) == 0:
        return None
    return value


@functools.cache
def _tag(keyword: str) -> BaseTag:
    """The tag of a keyword, found once: a lookup by tag costs a seventh of one by keyword."""
    return Tag(keyword)


def _values(ds: pydicom.Dataset, keyword: str) -> list:
    """The values of a required `keyword` as a list (one item for a single value)."""
    value = _raw(ds, keyword)
    if value is None:
        raise DicomReadError(f"missing {_label(keyword)}")
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _numbers(ds: pydicom.Dataset, keyword: str, count: int) -> np.ndarray:
    """Exactly `count` finite numbers."""
    values = _values(ds, keyword)
    if len(values) != count:
        plural = "s" * (len(values) != 1)
        raise _invalid(keyword, f"{len(values)} value{plural} {_show(values)}, needs {count}")
    try:
        numbers = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise _invalid(keyword, f"{_show(values)} is not numeric") from None
    if not np.isfinite(numbers).all():
        raise _invalid(keyword, f"{_show(values)} is not finite")
    return numbers


def _integer(ds: pydicom.Dataset, keyword: str, allowed: Collection[int] | None = POSITIVE) -> int:
    """A single integer, one of `allowed` (None: any)."""
    values = _values(ds, keyword)
    try:
        number = float(values[0]) if len(values) == 1 else None
    except (TypeError, ValueError):
        number = None
    if number is None or not number.is_integer():
        raise _invalid(keyword, f"{_show(values)} is not one integer")
    if allowed is not None and int(number) not in allowed:
        raise _invalid(keyword, f"{int(number)} is not one of {_show_allowed(allowed)}")
    return int(number)


def _text(ds: pydicom.Dataset, keyword: str, allowed) -> str:
    """A single code string, one of `allowed`."""
    values = _values(ds, keyword)
    text = str(values[0]).strip() if len(values) == 1 else None
    if text not in allowed:
        raise _invalid(keyword, f"{_show(values)} is not one of {', '.join(allowed)}")
    return text


def _rescale(ds: pydicom.Dataset, keyword: str, default: float) -> float:
    """RescaleSlope (finite, non-zero) or RescaleIntercept (finite); `default` when absent."""
    if _raw(ds, keyword) is None:
        return default
    value = float(_numbers(ds, keyword, 1)[0])
    if keyword == "RescaleSlope" and value == 0:
        raise _invalid(keyword, "0 would make every pixel equal")
    return value


def _invalid(keyword: str, what: str) -> DicomReadError:
    return DicomReadError(f"invalid {_label(keyword)}: {what}")


def _label(keyword: str) -> str:
    """A tag as pydicom names it: (0028,0030) 'Pixel Spacing'."""
    tag = Tag(keyword)
    return f"({tag.group:04X},{tag.element:04X}) '{dictionary_description(tag)}'"


def _show(values) -> str:
    """Values as one short line: '0.5' or [1, 'abc'] (cut after 60 characters)."""
    items = list(values)
    text = repr(str(items[0])) if len(items) == 1 else "[" + ", ".join(repr(str(v)) for v in items) + "]"
    return text if len(text) <= 60 else text[:57] + "..."


def _show_allowed(allowed) -> str:
    if isinstance(allowed, range) and len(allowed) > 3:
        return f"{allowed.start}..{allowed.stop - 1}"
    return ", ".join(str(v) for v in allowed)
