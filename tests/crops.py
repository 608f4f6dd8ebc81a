"""Level crops checked against the DICOM files they were cut from (ingest's and the multi-slice tests')."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from lumbar_fast import dicom
from lumbar_fast.ingest import mirrored_to_canonical_side


def recut_similarity(stored: np.ndarray, path: Path, x: float, y: float, width_mm: float,
                     condition: str) -> float:
    """Correlation of a stored crop channel with the same window cut afresh from one DICOM file (min-max
    scaled, so only the per-series window differs; mirrored into canonical side from the file's own
    orientation where the condition needs it), away from padding and window clipping."""
    ds = pydicom.dcmread(path)
    pixels = dicom.decode_pixels(ds)
    scaled = dicom.to_uint8(pixels, (float(pixels.min()), float(pixels.max())))
    spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
    recut = dicom.crop_mm(scaled, x, y, spacing, width_mm, stored.shape[0])
    if mirrored_to_canonical_side(condition, np.asarray(ds.ImageOrientationPatient, dtype=float)):
        recut = recut[:, ::-1]
    inside = (recut > 10) & (stored > 0) & (stored < 255)
    return float(np.corrcoef(recut[inside], stored[inside])[0, 1])
