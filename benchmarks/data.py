"""The data every benchmark runs on: a synth RSNA-layout folder and its ingest cache, made once per size.

Both are kept under the work folder, keyed by their parameters, so repeated runs (and the benchmarks that
share a size) reuse them; a half-made one (killed run) is detected by its missing completion mark and redone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import add_size_options, count, run_main, run_step
from lumbar_fast import rsna
from lumbar_fast.cache import CacheReader, open_cache

DONE = ".complete"


def lumbar_fast_command(*args: str) -> list[str]:
    """The argv that runs one lumbar-fast command with this interpreter (the package may not be installed)."""
    return [sys.executable, "-m", "lumbar_fast", *args]


def synth_data(workdir: Path, studies: int, seed: int = 0, image_size: int = 512,
               workers: int | None = None) -> Path:
    """A synth data set of `studies` studies, made once (by `workers` processes, None: every core):
    uncompressed 12-bit slices of `image_size` (512, like most real series) without pitfalls."""
    folder = workdir / f"synth-{studies}-s{seed}" if image_size == 512 else \
        workdir / f"synth-{studies}-s{seed}-i{image_size}"
    if not (folder / DONE).exists():
        shutil.rmtree(folder, ignore_errors=True)
        command = lumbar_fast_command("synth", str(folder), "--studies", str(studies), "--seed", str(seed),
                                      "--image-size", str(image_size), "--no-pitfalls", "--quiet",
                                      *workers_option(workers))
        run_step(command)
        (folder / DONE).touch()
    return folder


def ingested_cache(data: Path, workdir: Path, fmt: str = "zarr", slices: int = 3, size: int = 224,
                   workers: int | None = None) -> Path:
    """The ingest cache of `data` with level crops of `slices` slices of size×size, made once (by `workers`
    processes, None: every core). Three slices by default: the seed's pipelines, the benchmarks' peers, read
    three."""
    sized = "" if size == 224 else f"-s{size}"
    cache = workdir / f"{data.name}-c{slices}{sized}.{fmt}"
    if not (workdir / f"{cache.name}{DONE}").exists():
        shutil.rmtree(cache, ignore_errors=True)
        command = [*ingest_command(data, cache, workers, fmt), "--channels", str(slices), "--size", str(size)]
        run_step(command)
        (workdir / f"{cache.name}{DONE}").touch()
    return cache


def ingest_command(data: Path, cache: Path, workers: int | None, fmt: str) -> list[str]:
    """The argv of `lumbar-fast ingest` for one benchmark run (workers None: ingest's default, every core)."""
    command = lumbar_fast_command("ingest", str(data), "--out", str(cache), "--format", fmt, "--no-progress")
    return command + workers_option(workers)


def workers_option(workers: int | None) -> list[str]:
    """`--workers N` of a lumbar-fast command, none for None (the command's default: every core)."""
    return ["--workers", str(workers)] if workers else []


@dataclass
class LevelItems:
    """The labelled level crops of one sequence, as every contender sees them: item i is image `rows[i]` of
    the cache's levels array (also the DICOM `dicoms[i]` it was cut from) with class `labels[i]`."""

    images_path: Path
    rows: np.ndarray
    labels: np.ndarray
    dicoms: list[Path]

    def tiled(self, count: int) -> LevelItems:
        """`count` items cycling through these (a small cache makes an epoch of realistic length)."""
        take = np.arange(count) % len(self.rows)
        dicoms = [self.dicoms[i] for i in take]
        return LevelItems(self.images_path, self.rows[take], self.labels[take], dicoms)


def level_items(cache: CacheReader, data: Path, sequence: str) -> LevelItems:
    """Every labelled level crop of `sequence` in the cache, with the DICOM file of its labelled slice."""
    table: pd.DataFrame = cache.level_labels(sequence).reset_index(drop=True)
    table = table[table["severity"] != rsna.MISSING]
    dicoms = [data / "train_images" / str(row.study_id) / str(row.series_id) / f"{row.instance_number}.dcm"
              for row in table.itertuples()]
    return LevelItems(Path(cache.array_path(sequence, "levels")), table.index.to_numpy(np.int64),
                      table["severity"].to_numpy(np.int64), dicoms)


def prepared_items(workdir: Path, studies: int, sequence: str, items: int, slices: int = 3,
                   image_size: int = 512, size: int = 224) -> LevelItems:
    """Synth data (slices of `image_size`), its cache (crops of `size`) and `items` level items of `sequence`
    from it: the loader and train benchmarks' data."""
    data = synth_data(workdir, studies, image_size=image_size)
    cache = open_cache(ingested_cache(data, workdir, slices=slices, size=size))
    return level_items(cache, data, sequence).tiled(items)


def main(argv: list[str] | None = None) -> None:
    """Make the synth data and its cache ahead of the benchmarks (gpu_check.sh times this step apart)."""
    parser = argparse.ArgumentParser(description="synth data + ingest cache for the benchmarks")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--studies", type=count(), required=True)
    parser.add_argument("--slices", default="3", help="comma list: a cache per slices-per-crop count")
    parser.add_argument("--workers", type=count(), default=None,
                        help="processes for synth and ingest (default: every core; 1 for a tiny data set, "
                             "where starting a pool costs more than it saves)")
    add_size_options(parser)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    for slices in args.slices.split(","):
        data = synth_data(args.workdir, args.studies, image_size=args.image_size, workers=args.workers)
        cache = ingested_cache(data, args.workdir, slices=int(slices), size=args.size, workers=args.workers)
        print(f"{cache} ready after {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    run_main(main)
