"""Write rendered slices as MR DICOM files, with the storage pitfalls of real data (bit depth, MONOCHROME1,
rescale, compressed transfer syntaxes), and damage a few files on purpose."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

#: transfer syntax name (manifest) -> UID
TRANSFER_SYNTAXES: dict[str, str] = {
    "explicit_little": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k": JPEG2000Lossless,
}
#: pydicom's registered UID root; the rest of each UID is derived from the seed, so runs are reproducible
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class Encoding:
    """How one series stores its pixels: intensity 1.0 maps to `full_scale` modality units."""

    full_scale: float
    bits_stored: int = 12
    monochrome1: bool = False
    rescale: tuple[float, float] | None = None  # RescaleSlope, RescaleIntercept
    transfer_syntax: str = "explicit_little"

    def stored(self, image: np.ndarray) -> np.ndarray:
        """Stored pixel values (uint16) of an intensity image."""
        top = (1 << self.bits_stored) - 1
        values = image * self.full_scale
        if self.rescale:
            slope, intercept = self.rescale
            values = (values - intercept) / slope
        stored = np.clip(np.rint(values), 0, top).astype(np.uint16)
        return top - stored if self.monochrome1 else stored

    def window(self) -> tuple[float, float]:
        """WindowCenter, WindowWidth in modality units, covering intensities 0..1."""
        slope, intercept = self.rescale or (1.0, 0.0)
        ends = self.stored(np.array([0.0, 1.0])).astype(np.float64) * slope + intercept
        return float(ends.mean()), float(abs(ends[1] - ends[0]))


@dataclass(frozen=True)
class SeriesHeader:
    """The attributes shared by all files of one series."""

    study_id: int
    series_id: int
    series_number: int
    description: str
    encoding: Encoding

    @property
    def study_uid(self) -> str:
        return uid_for("study", self.study_id)

    @property
    def series_uid(self) -> str:
        return uid_for("series", self.study_id, self.series_id)


def uid_for(*parts: object) -> str:
    """A reproducible DICOM UID derived from `parts`."""
    return generate_uid(UID_PREFIX, entropy_srcs=[str(p) for p in parts])


class SeriesWriter:
    """Writes the slices of one series as MR DICOM files; the tags shared by the series are set once."""

    def __init__(self, header: SeriesHeader) -> None:
        self.header = header
        encoding = header.encoding
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.SOPClassUID = MRImageStorage
        ds.StudyInstanceUID = header.study_uid
        ds.SeriesInstanceUID = header.series_uid
        ds.FrameOfReferenceUID = uid_for("frame", header.study_id)
        ds.Modality = "MR"
        ds.PatientID = str(header.study_id)
        ds.StudyID = str(header.study_id)
        ds.BodyPartExamined = "LSPINE"
        ds.PatientPosition = "HFS"
        ds.SeriesNumber = header.series_number
        ds.SeriesDescription = header.description
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME1" if encoding.monochrome1 else "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = encoding.bits_stored
        ds.HighBit = encoding.bits_stored - 1
        ds.PixelRepresentation = 0
        if encoding.rescale:
            ds.RescaleSlope, ds.RescaleIntercept = (_ds_float(v) for v in encoding.rescale)
            ds.RescaleType = "US"
        center, width = encoding.window()
        ds.WindowCenter, ds.WindowWidth = _ds_float(center), _ds_float(width)
        self.dataset = ds

    def write(self, path: Path, image: np.ndarray, plane, instance_number: int) -> None:
        """Write one rendered slice (`plane` a render.SlicePlane) as instance `instance_number` at `path`."""
        header, ds = self.header, self.dataset
        sop_uid = uid_for("instance", header.study_id, header.series_id, instance_number)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = instance_number
        ds.ImagePositionPatient = [_ds_float(v) for v in plane.position]
        ds.ImageOrientationPatient = [_ds_float(v) for v in plane.orientation]
        ds.PixelSpacing = [_ds_float(v) for v in plane.spacing]
        ds.SliceThickness = _ds_float(plane.thickness)
        ds.Rows, ds.Columns = plane.rows, plane.cols
        stored = header.encoding.stored(image)
        ds.PixelData = stored.tobytes()
        syntax = header.encoding.transfer_syntax
        if syntax != "explicit_little":
            ds.compress(TRANSFER_SYNTAXES[syntax], stored, encoding_plugin="pylibjpeg",
                        generate_instance_uid=False)
        ds.save_as(path, enforce_file_format=True)


def damage_file(path: Path, kind: str, rng: np.random.Generator) -> None:
    """Make a written file unusable: "truncated" cuts it inside its pixel data, "garbage" overwrites its
    header with random bytes (no DICM prefix)."""
    data = bytearray(path.read_bytes())
    if kind == "truncated":
        data = data[: int(len(data) * rng.uniform(0.4, 0.8))]
    else:
        data[: min(len(data), 1024)] = rng.integers(0, 256, min(len(data), 1024), dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def _ds_float(value: float) -> str:
    """A decimal string (DICOM DS, at most 16 characters)."""
    return f"{value:.10g}"
