"""The seed's per-image DICOM work, and the ingest benchmark's bare loop built on it (no torch imported here,
so that the bare loop's processes start as lean as they can).

    python -m benchmarks.decode DATA_DIR [--workers N]   # decode + resize every training slice, keep none
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import pydicom

from benchmarks.arguments import count, run_main
from lumbar_fast.dicom import decode_pixels, resize, to_uint8
from lumbar_fast.processes import pool_context


def decode_and_resize(path: str | Path, size: int) -> np.ndarray:
    """One DICOM slice decoded (rescale, MONOCHROME1 as ingest does), min-max windowed to uint8 and resized
    to size×size: the seed's work per image, and the bare loop's per slice."""
    pixels = decode_pixels(pydicom.dcmread(path))
    low = float(pixels.min())
    return resize(to_uint8(pixels, (low, max(float(pixels.max()), low + 1.0))), size)


def dicom_files(data: Path) -> list[Path]:
    """Every DICOM file of an RSNA-layout folder's training images."""
    return sorted((data / "train_images").rglob("*.dcm"))


def bare_loop(data: Path, workers: int, size: int = 224) -> int:
    """Decode and resize every training slice in a pool of `workers` processes (started as ingest starts
    its own), keeping nothing; the count."""
    files = dicom_files(data)
    with pool_context().Pool(workers) as pool:
        for _ in pool.imap_unordered(partial(decode_and_resize, size=size), files, chunksize=8):
            pass
    return len(files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="the bare decode+resize loop over a data set's slices")
    parser.add_argument("data", type=Path)
    parser.add_argument("--workers", type=count(), default=1)
    args = parser.parse_args(argv)
    bare_loop(args.data, args.workers)


if __name__ == "__main__":
    run_main(main)
