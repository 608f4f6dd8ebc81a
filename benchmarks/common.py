"""What every benchmark shares: interleaved repeats, medians and spread, hardware, versions, JSON, Markdown.

A comparison runs its contenders A, B, A, B, … so that slow drift of a shared machine (other processes, page
cache, clocks) falls on every contender alike; each figure is reported as the median of the repeats with the
range around it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.arguments import count, run_main  # noqa: F401 (the benchmarks' entry points)
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.report import markdown_table  # noqa: F401 (the benchmarks' tables: common.markdown_table)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: a contender runs once per call and returns its figures (name -> number) for that repeat
Contender = Callable[[], dict[str, float]]


def interleaved(contenders: dict[str, Contender], repeats: int, log: Callable[[str], None] = print,
                before_each: Callable[[], None] | None = None) -> dict[str, list[dict[str, float]]]:
    """Run the contenders in turn, A, B, A, B, …, `repeats` times (`before_each` before every run); the
    figures of every run, per contender."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for repeat in range(repeats):
        for name, contender in contenders.items():
            if before_each is not None:
                before_each()
            figures = contender()
            runs[name].append(figures)
            shown = ", ".join(f"{key} {value:.4g}" for key, value in figures.items())
            log(f"  repeat {repeat + 1}/{repeats} {name}: {shown}")
    return runs


def settle(idle_share: float = 0.9, window: float = 2.0, limit: float = 120.0) -> float:
    """Write back what the previous contender left dirty, then wait until the CPUs are `idle_share` idle
    over a `window` (at most `limit` s), so that one contender's aftermath (writeback, freed page cache that
    a VM hands back to its host) is not timed as the next one's; the seconds waited."""
    started = time.perf_counter()
    os.sync()
    while time.perf_counter() - started < limit:
        before = _cpu_jiffies()
        time.sleep(window)
        after = _cpu_jiffies()
        busy, idle = (a - b for a, b in zip(after, before, strict=True))
        if idle >= idle_share * (busy + idle):
            break
    return time.perf_counter() - started


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, idle) jiffies of all CPUs since boot, from /proc/stat (idle and iowait count as idle)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, idle


def startable(builders: dict[str, Callable[[], Any]], log: Callable[[str], None] = print,
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """Build every contender once; one that fails with a one-line LumbarFastError (DALI missing or failing to
    start on this machine, say) is left out with its reason instead of failing the whole benchmark."""
    built, skipped = {}, {}
    for name, build in builders.items():
        try:
            built[name] = build()
        except LumbarFastError as exc:
            skipped[name] = str(exc)
            log(f"  skipping {name}: {exc}")
    return built, skipped


def skipped_lines(skipped: dict[str, str]) -> str:
    """The contenders left out, one Markdown bullet each (empty when none)."""
    return "".join(f"\n- {name} skipped: {reason}" for name, reason in skipped.items())


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, minimum, maximum, the half-range as a percentage of the median, and how many values."""
    median = statistics.median(values)
    low, high = min(values), max(values)
    half_range = 100.0 * (high - low) / 2 / median if median else 0.0
    return {"median": median, "min": low, "max": high, "spread_pct": half_range, "n": len(values)}


def summarise(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per contender and figure: the spread() of its repeats."""
    return {name: {key: spread([figures[key] for figures in repeats]) for key in repeats[0]}
            for name, repeats in runs.items() if repeats}


def paired_ratio(runs: dict[str, list[dict[str, float]]], numerator: str, denominator: str, key: str,
                 ) -> dict[str, float]:
    """spread() of numerator / denominator taken repeat by repeat: contenders that ran side by side are
    compared under the same load, so the drift of a shared machine cancels out of each ratio."""
    return spread([ratio(a[key], b[key]) for a, b in zip(runs[numerator], runs[denominator], strict=True)])


def ratio_cell(stats: dict[str, float]) -> str:
    """A paired ratio as a table cell: median × and its ± half-range in percent."""
    return f"{stats['median']:.2f}×{plus_minus(stats)}"


def cell(stats: dict[str, float], digits: int = 0) -> str:
    """One table cell: the median with its ± half-range in percent."""
    return f"{stats['median']:.{digits}f}{plus_minus(stats)}"


def plus_minus(stats: dict[str, float]) -> str:
    """" ±N%" of a spread(), or nothing for one value (records before `n` was kept: always shown)."""
    return "" if stats.get("n", 2) == 1 else f" ±{stats['spread_pct']:.0f}%"


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN when the denominator is zero (a contender that did no work)."""
    return numerator / denominator if denominator else float("nan")


# -- the machine ---------------------------------------------------------------------------------------------
def hardware() -> dict[str, Any]:
    """CPU model, cores, memory, load and GPUs; GPUs through nvidia-smi, so that CUDA is never initialised
    here (DALI's workers must start before anything touches CUDA)."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "gpus": _gpus(),
    }
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpus() -> list[str]:
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                 "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def versions() -> dict[str, str]:
    """The versions a run's config.json records, plus the packages the benchmarks touch."""
    from lumbar_fast.runfolder import environment

    found = environment()
    for name in ("zarr", "h5py", "pydicom", "PIL", "torchvision"):
        try:
            found[name] = __import__(name).__version__
        except ImportError:
            found[name] = "missing"
    return found


# -- running and reporting -----------------------------------------------------------------------------------
def base_parser(doc: str, repeats: int = 5) -> argparse.ArgumentParser:
    """The options every benchmark takes: repeats, where to write JSON, where to keep its generated data;
    `doc`'s first paragraph describes it."""
    parser = argparse.ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()))
    parser.add_argument("--repeats", type=count(), default=repeats,
                        help="interleaved repeats per contender (≥ 5 for figures worth reporting)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lumbar-fast-bench",
                        help="generated data sets and caches (reused between runs when the sizes match)")
    return parser


def add_size_options(parser: argparse.ArgumentParser) -> None:
    """The sizes of a benchmark's data: the synth DICOM slices and the cache's crops (the defaults are the
    real data's and the recipe's; gpu_check.sh --dry-run makes both small)."""
    parser.add_argument("--image-size", type=count(64), default=512, help="synth DICOM slice size (pixels)")
    parser.add_argument("--size", type=count(8), default=224, help="crop size of the cache (ingest --size)")


#: run argv[1:], report [exit status, wall seconds, peak RSS KiB of its largest process] as JSON on stdout
_MEASURE = ("import json, os, subprocess, sys, time; start = time.perf_counter(); "
            "child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "_, status, usage = os.wait4(child.pid, 0); seconds = time.perf_counter() - start; "
            "print(json.dumps([os.waitstatus_to_exitcode(status), seconds, usage.ru_maxrss]))")


def last_line(text: str) -> str:
    """A failed command's last non-empty line of stderr: its one-line error, or a traceback's last line."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def run_step(command: Sequence[str]) -> None:
    """Run a preparation command (synth, ingest); LumbarFastError with its last stderr line if it fails, after
    its whole stderr (a one-shot GPU machine's log keeps the traceback)."""
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(result.stderr)
    if result.returncode != 0:
        raise LumbarFastError(f"{' '.join(command)} failed ({result.returncode}): {last_line(result.stderr)}")


def run_measured(command: Sequence[str]) -> dict[str, float]:
    """Run a command to completion; its wall seconds and the peak RSS (MiB) of its largest process.

    `os.wait4` gives the child's rusage, in which Linux folds the peak of every descendant it waited for (so
    worker processes count; the figure is the largest single process, not their sum). A child also inherits
    the high-water mark of the process it was forked from, so a small Python process starts and measures the
    command, and this (large) one only reads the result.
    """
    result = subprocess.run([sys.executable, "-c", _MEASURE, *command], env=importable_env(),
                            capture_output=True, text=True)
    if result.returncode != 0 or not result.stdout.strip():
        raise LumbarFastError(f"measuring {' '.join(command)} failed: {last_line(result.stderr)}")
    status, seconds, peak_kib = json.loads(result.stdout.strip().splitlines()[-1])
    if status != 0:
        raise LumbarFastError(f"{' '.join(command)} failed ({status}): {last_line(result.stderr)}")
    return {"seconds": seconds, "peak_rss_mib": peak_kib / 1024}


def importable_env() -> dict[str, str]:
    """This environment with the repository root on PYTHONPATH, so a child can run `-m benchmarks.…` from any
    working directory."""
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def directory_mib(path: Path) -> float:
    """Size on disk of a file or folder tree, in MiB (allocated blocks, as `du` counts); 0 when absent, and
    files that vanish while it counts (a running ingest deletes its part files) count as absent."""
    return _allocated_bytes(path) / 2**20


def _allocated_bytes(path: Path) -> int:
    try:
        if not path.is_dir():
            return path.stat().st_blocks * 512
        with os.scandir(path) as entries:
            return sum(_allocated_bytes(Path(entry.path)) for entry in entries)
    except FileNotFoundError:
        return 0


class DiskPeak:
    """The largest total size on disk of some paths while a `with` block runs, sampled from a thread every
    `interval` seconds (and once at the end)."""

    def __init__(self, paths: Sequence[Path], interval: float = 0.02) -> None:
        self.paths, self.interval = list(paths), interval
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> DiskPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()
        self._sample()

    def _sample(self) -> None:
        self.peak_mib = max(self.peak_mib, sum(directory_mib(path) for path in self.paths))


def report(benchmark: str, args: argparse.Namespace, results: dict[str, Any], table: str,
           package: str = "benchmarks") -> dict[str, Any]:
    """Print the Markdown table; write the JSON record (hardware, versions, arguments, figures) if asked
    (`package`: where the benchmark's module lives, benchmarks or benchmarks.studies)."""
    record = {
        "benchmark": benchmark,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", f"{package}.{benchmark}", *sys.argv[1:]]),
        "hardware": hardware(),
        "versions": versions(),
        "args": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "results": results,
        "table": table,
    }
    print(f"\n## {benchmark}\n\n{table}\n", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2, default=float) + "\n")
    return record


def summary_markdown(record: dict[str, Any]) -> str:
    """A JSON record as Markdown: the benchmark, its machine and versions, its table."""
    machine = record["hardware"]
    gpus = "; ".join(machine["gpus"]) or "no GPU"
    software = ", ".join(f"{name} {version}" for name, version in record["versions"].items())
    return (f"## {record['benchmark']} — {record['date']}\n\n"
            f"{machine['cpu']} ({machine['usable_cpus']} usable CPUs, {machine['memory_gib']} GiB, load "
            f"{machine['load_average_1min']}); {gpus}\n\n{software}\n\n`{record['command']}`\n\n"
            f"{record['table']}\n")


def main(paths: Sequence[str]) -> None:
    """Print the Markdown of each JSON record named (the ones missing are named as such; exit 1 then)."""
    if not paths or paths[0] in ("-h", "--help"):
        print("usage: python -m benchmarks.common RECORD.json...  (the Markdown of benchmark JSON records)")
        return
    for path in map(Path, paths):
        print(summary_markdown(json.loads(path.read_text())) if path.exists() else f"## {path}: missing\n")
    if not all(map(os.path.exists, paths)):
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
