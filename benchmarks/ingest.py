"""Ingest benchmark: `lumbar-fast ingest` against a bare loop that only decodes and resizes the same files.

Contenders, per worker count: ingest to Zarr, ingest to HDF5, and the bare loop (the same DICOM files decoded
and resized to 224 in a process pool, results dropped). Every run is a fresh process, so start-up counts for
all alike; reported: slices/s, the peak RSS of the largest process, the cache's size on disk, the peak disk
use of the ingest (cache and work folder, sampled every 20 ms) as a multiple of the finished cache, and the
time to read the finished cache's arrays into RAM. Each cache is removed after its run, so that the disk holds
one at a time.

    python -m benchmarks.ingest [--workers 1,2] [--studies 8] [--image-size 512] [--json out.json]
    python -m benchmarks.ingest --data DIR --no-read --repeats 1    # an existing folder, e.g. at RSNA scale
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from functools import partial
from pathlib import Path

from benchmarks import common
from benchmarks.data import ingest_command, synth_data
from benchmarks.decode import dicom_files
from lumbar_fast.cache import open_cache

FORMATS = ("zarr", "hdf5")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.base_parser(__doc__)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--formats", default=",".join(FORMATS), help="cache formats: zarr, hdf5")
    parser.add_argument("--studies", type=common.count(), default=8, help="synth studies to ingest")
    parser.add_argument("--image-size", type=common.count(64), default=512,
                        help="synth base image size (pixels)")
    parser.add_argument("--data", type=Path,
                        help="an RSNA-layout folder to ingest instead of a synth one (then --studies and "
                             "--image-size are unused)")
    parser.add_argument("--no-read", action="store_true",
                        help="skip reading each cache back into RAM (one at RSNA scale is larger than RAM)")
    parser.add_argument("--settle", action="store_true",
                        help="before each run, write back what the last one left and wait for idle CPUs "
                             "(at RSNA scale a 20-GiB cache's aftermath otherwise slows the next contender)")
    args = parser.parse_args(argv)
    try:
        args.workers = [common.count()(text) for text in args.workers.split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument --workers: {exc}")
    unknown = set(filter(None, args.formats.split(","))) - set(FORMATS)
    if unknown:
        parser.error(f"unknown format(s) {', '.join(sorted(unknown))}; choose from {', '.join(FORMATS)}")
    if args.data is not None and not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder")
    return args


def read_seconds(cache: Path) -> float:
    """Seconds to open a finished cache and read every sequence's stacks and level crops into RAM."""
    start = time.perf_counter()
    reader = open_cache(cache)
    for sequence in reader.sequences():
        reader.stack_images(sequence)
        reader.level_images(sequence)
    return time.perf_counter() - start


def measured_ingest(data: Path, cache: Path, workers: int | None, fmt: str, interval: float = 0.02,
                    ) -> dict[str, float]:
    """One ingest from scratch in a fresh process: wall seconds, peak RSS, cache size and the peak disk use
    of cache and work folder (sampled every `interval` s; a large store takes longer to walk) ÷ the cache."""
    _remove(cache)
    with common.DiskPeak([cache, cache.with_name(cache.name + ".ingest")], interval) as disk:
        measured = common.run_measured(ingest_command(data, cache, workers, fmt))
    cache_mib = common.directory_mib(cache)
    return {**measured, "cache_mib": cache_mib, "peak_disk_ratio": disk.peak_mib / cache_mib}


def ingest_run(data: Path, cache: Path, workers: int, fmt: str, slices: int, read: bool = True,
               interval: float = 0.02) -> dict[str, float]:
    """One ingest from scratch: slices/s, peak RSS, cache size, peak disk use (sampled every `interval` s)
    and, when `read`, the cache's read time; the cache is removed afterwards."""
    run = measured_ingest(data, cache, workers, fmt, interval)
    found = {"slices_s": slices / run["seconds"], "peak_rss_mib": run["peak_rss_mib"],
             "cache_mib": run["cache_mib"], "peak_disk_ratio": run["peak_disk_ratio"]}
    if read:
        found["read_s"] = read_seconds(cache)
    _remove(cache)
    return found


def _remove(cache: Path) -> None:
    shutil.rmtree(cache, ignore_errors=True)
    cache.unlink(missing_ok=True)


def bare_run(data: Path, workers: int, slices: int) -> dict[str, float]:
    """One bare decode+resize loop in a fresh process: slices/s and peak RSS."""
    command = [sys.executable, "-m", "benchmarks.decode", str(data), "--workers", str(workers)]
    measured = common.run_measured(command)
    return {"slices_s": slices / measured["seconds"], "peak_rss_mib": measured["peak_rss_mib"]}


def ratios(runs: dict, workers: list[int], formats: list[str]) -> dict[str, dict[str, float]]:
    """Paired (repeat by repeat) ratios: ingest time / bare-loop time per worker count, and each format's
    speed-up from the fewest to the most workers."""
    found = {}
    for fmt in formats:
        for count in workers:
            found[f"ingest {fmt} / bare time, {count} worker(s)"] = common.paired_ratio(
                runs, f"bare-w{count}", f"{fmt}-w{count}", "slices_s")
        if len(workers) > 1:
            found[f"{fmt} speed-up {workers[0]}→{workers[-1]} workers"] = common.paired_ratio(
                runs, f"{fmt}-w{workers[-1]}", f"{fmt}-w{workers[0]}", "slices_s")
    return found


def table(summary: dict, found: dict[str, dict[str, float]]) -> str:
    """Slices/s, memory, size, peak disk and read time per contender; then the ratios."""
    rows = []
    for name, stats in summary.items():
        rows.append([name, common.cell(stats["slices_s"]), f"{stats['peak_rss_mib']['median']:.0f}",
                     f"{stats['cache_mib']['median']:.1f}" if "cache_mib" in stats else "",
                     f"{stats['peak_disk_ratio']['max']:.2f}×" if "peak_disk_ratio" in stats else "",
                     common.cell(stats["read_s"], 2) if "read_s" in stats else ""])
    header = ["contender", "slices/s", "peak RSS MiB", "cache MiB", "peak disk (max)", "read s"]
    notes = "\n".join(f"- {name}: {common.ratio_cell(stats)}" for name, stats in found.items())
    return common.markdown_table(header, rows) + "\n\n" + notes


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    workers = args.workers
    formats = [fmt for fmt in args.formats.split(",") if fmt]
    data = args.data or synth_data(args.workdir, args.studies, image_size=args.image_size)
    slices = len(dicom_files(data))
    print(f"ingest benchmark: {data.name}, {slices} slices, workers {workers}, {args.repeats} interleaved "
          "repeats", flush=True)
    interval = 0.5 if args.data else 0.02  # a given folder may be RSNA-sized: walking its store takes longer
    contenders = {}
    for count in workers:
        for fmt in formats:
            cache = args.workdir / f"ingest-bench-w{count}.{fmt}"
            contenders[f"{fmt}-w{count}"] = partial(ingest_run, data, cache, count, fmt, slices,
                                                       read=not args.no_read, interval=interval)
        contenders[f"bare-w{count}"] = partial(bare_run, data, count, slices)
    settle = (lambda: print(f"  settled in {common.settle():.0f} s", flush=True)) if args.settle else None
    runs = common.interleaved(contenders, args.repeats, before_each=settle)
    summary, found = common.summarise(runs), ratios(runs, workers, formats)
    results = {"slices": slices, "runs": runs, "summary": summary, "ratios": found}
    return common.report("ingest", args, results, table(summary, found))


if __name__ == "__main__":
    common.run_main(main)
