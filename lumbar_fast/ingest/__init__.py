"""Parallel, resumable DICOM -> cache conversion (the one place where DICOM decoding is paid).

Worker processes each turn one series into uint8 stack images, level crops and tables, compress every image
(one zstd frame each), and commit it as one part file (`<out>.ingest/parts/{study}_{series}.pkl`, written
under a temporary name and renamed, so a part is complete or absent). The main process alone appends the
parts to the final Zarr store (joining the frames into its chunks: it compresses nothing but what a
resumed run reads back) or HDF5 file in
sorted (study_id, series_id) order, each as soon as all before it are committed, and writes the tables and
the attributes last. A Zarr store records in its journal what it holds (series, tables), now and then, and
the parts it records are deleted, so parts never fill the disk beside the store.
A killed run is resumed by running it again: complete parts are kept, temporary files dropped, a Zarr store
appended to from its last record (an HDF5 file rebuilt from the parts); the result equals an uninterrupted
run's.

The stages: `plan.py` (CSVs → series tasks and label errors), `convert.py` (one series → a part file, in
the worker processes), `consolidate.py` (the single writer of the store and its journal); here `ingest()`
runs them: the worker pool, resume and the up-to-date check.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from functools import partial
from pathlib import Path

from tqdm import tqdm

from lumbar_fast import cache
from lumbar_fast.cache import DEFAULT_CHANNELS, DEFAULT_CROP_MM, ImageSettings, IngestSettings
from lumbar_fast.errors import CacheError, WorkerError
from lumbar_fast.ingest.consolidate import Consolidator, IngestSummary
from lumbar_fast.ingest.convert import commit_part, convert_series, mirrored_to_canonical_side
from lumbar_fast.ingest.plan import COORDINATE_COLUMNS, SeriesTask, label_files, plan_ingest
from lumbar_fast.processes import freed_memory_kept, keep_freed_memory, large_blocks_mapped, pool_context

__all__ = ["COORDINATE_COLUMNS", "IngestSummary", "convert_series", "ingest", "ingest_with",
           "mirrored_to_canonical_side", "plan_ingest", "worker_count"]


#: a series starts converting only within this many series per worker of the next one to append
AHEAD_PER_WORKER = 2
#: series handed to the pool per worker process: a worker has its next series queued while the main process
#: appends the one it finished, instead of waiting for that append (2 workers, 24 studies of 512 px: 245
#: against 227 slices/s with one each)
QUEUED_PER_WORKER = 2


def ingest(data_dir: str | Path, out: str | Path, split: str = "train", workers: int | None = None,
           fmt: str = "zarr", size: int = 224, channels: int = DEFAULT_CHANNELS,
           crop_mm: dict[str, float] | None = None, canonical_side: bool = True,
           limit_studies: int | None = None, coordinates: str | Path | None = None,
           labels: str | Path | None = None, progress: bool = True) -> IngestSummary:
    """Convert an RSNA-layout folder into a cache at `out` (resuming an interrupted run, a no-op when the
    cache is already finished with the same parameters)."""
    images = ImageSettings(size=size, channels=channels, crop_mm={**DEFAULT_CROP_MM, **(crop_mm or {})},
                           canonical_side=canonical_side)
    settings = IngestSettings(
        data_dir=str(data_dir), split=split, fmt=fmt, images=images, limit_studies=limit_studies,
        coordinates=str(coordinates) if coordinates else None, labels=str(labels) if labels else None)
    return ingest_with(settings, out, workers, progress)


def ingest_with(settings: IngestSettings, out: str | Path, workers: int | None = None,
                progress: bool = True) -> IngestSummary:
    """`ingest` of typed settings: a cache at `out` made as `settings` say (paths resolved, the CSVs'
    digests taken now); `replace(reader.settings(), ...)` makes a cache like another one."""
    started = time.perf_counter()
    params = resolved_settings(settings)
    out = Path(out)
    finished = _finished_summary(out, params)
    if finished is not None:
        return finished
    workers = worker_count(workers)
    # the writer's memory would grow with the study count; a lone worker converts in this process too, and
    # keeps its freed memory for the next series, as the worker processes do (processes.keep_freed_memory)
    with large_blocks_mapped() if workers > 1 else freed_memory_kept():
        plan = plan_ingest(params)
        work = _prepare_work_dir(out, params)
        parts = work / "parts"
        writer = Consolidator(plan, params, parts, out)
        done = {p.name for p in parts.glob("*.pkl")}
        todo = [task for task in plan.tasks if task.part_name not in done | writer.recorded]
        writer.advance()
        counts = _convert_all(todo, params, parts, workers, progress, writer)
        summary = writer.finish()
    shutil.rmtree(work)
    summary.series_converted = counts["series"]
    summary.series_resumed = len(plan.tasks) - len(todo)
    summary.seconds = time.perf_counter() - started
    return summary


def resolved_settings(settings: IngestSettings) -> IngestSettings:
    """`settings` as the cache records them: checked, paths resolved, the CSVs' digests taken now."""
    params = replace(settings, data_dir=_resolved(settings.data_dir),
                     coordinates=_resolved(settings.coordinates), labels=_resolved(settings.labels))
    params.check()
    return replace(params, input_digests=input_digests(params))


def settings_digest(settings: IngestSettings) -> str:
    """12 hex digits naming what an ingest with `settings` would make (its recorded parameters, the CSVs'
    contents included): a cache named by it is never taken for one of other settings."""
    record = json.dumps(resolved_settings(settings).attrs(), sort_keys=True)
    return hashlib.sha1(record.encode()).hexdigest()[:12]


def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _convert_all(tasks: list[SeriesTask], params: IngestSettings, parts: Path, workers: int,
                 progress: bool, writer: Consolidator) -> dict[str, int]:
    """Convert `tasks` into part files with `workers` processes (in-process for 1), letting `writer`
    append after each; a task starts only within AHEAD_PER_WORKER × workers series of the writer's next, so
    that parts cannot pile up on disk when the writer is slower than the workers. A progress bar shows
    series/s, slices/s and the ETA."""
    counts = {"series": 0, "slices": 0}
    job = partial(commit_part, params=params, parts=parts)
    started = time.perf_counter()
    results = _map(job, tasks, workers, lambda task: writer.ahead(task) < AHEAD_PER_WORKER * workers)
    with tqdm(total=len(tasks), desc="ingest", unit="series", disable=not progress or not tasks) as bar, \
            contextlib.closing(results):  # a writer's error shuts the pool down now, not when collected
        for slices in results:
            counts["series"] += 1
            counts["slices"] += slices
            writer.advance()
            bar.set_postfix_str(f"{counts['slices'] / (time.perf_counter() - started):.0f} slices/s")
            bar.update()
    return counts


def _map(job: Callable[[SeriesTask], int], tasks: list[SeriesTask], workers: int,
         admits: Callable[[SeriesTask], bool]) -> Iterator[int]:
    """Results of `job` over `tasks`, in completion order, from `workers` processes; the next task is handed
    over while fewer than QUEUED_PER_WORKER per process are in flight and `admits` it (or none is)."""
    if workers == 1 or len(tasks) <= 1:
        yield from map(job, tasks)
        return
    waiting, in_flight = deque(tasks), set()
    pool = ProcessPoolExecutor(min(workers, len(tasks)), mp_context=pool_context(),
                               initializer=keep_freed_memory)
    try:
        while waiting or in_flight:
            while waiting and len(in_flight) < QUEUED_PER_WORKER * workers and (
                    not in_flight or admits(waiting[0])):
                in_flight.add(pool.submit(job, waiting.popleft()))
            finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in finished:
                yield _result(future)
    finally:  # on an error or a stopped caller: the queued series are dropped, the running ones finish
        pool.shutdown(cancel_futures=True)


def _result(future: Future) -> int:
    """A finished conversion's result; WorkerError when its process died (a pool that loses a process
    can no longer run anything, and its parts written so far are what a rerun resumes from)."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise WorkerError("an ingest worker process died (killed by the system, e.g. out of memory, or "
                          "crashed in native code): the series finished are kept, so the same command "
                          "resumes; --workers 1 shows which series it was") from None


def _finished_summary(out: Path, params: IngestSettings) -> IngestSummary | None:
    """For a finished cache at `out`: a no-op summary when its parameters match, CacheError otherwise;
    None when there is no finished cache (nothing there, or an unfinished one of this same ingest)."""
    if not out.exists():
        return None
    try:
        reader = cache.open_cache(out)
    except CacheError:
        if _work_params(out) == params.attrs():
            return None  # our own unfinished consolidation: it will be rebuilt from the parts
        raise
    wanted = {"params": params.attrs(), "split": params.split}
    made = {"params": reader.attrs["params"], "split": reader.attrs["split"]}
    if made != wanted:
        raise CacheError(f"{out} was made with other parameters ({_changes(made, wanted)}); "
                         "choose another --out or remove it")
    shutil.rmtree(_work_dir(out), ignore_errors=True)  # left over if a run was killed while cleaning up
    source = reader.attrs["source"]
    errors = reader.errors()
    return IngestSummary(out=out, up_to_date=True, series=source["series_ingested"], slices=source["slices"],
                         level_crops=source["level_crops"], errors=len(errors),
                         error_reasons=cache.reason_counts(errors))


#: a recorded parameter's name as the ingest command calls it, where they differ
PARAMETER_NAMES = {"fmt": "format"}


def _changes(made: dict, wanted: dict) -> str:
    """What differs between a cache's recorded parameters and a rerun's, by name (CSVs by their role)."""
    if made["split"] != wanted["split"]:  # its CSVs differ as a consequence: not worth naming
        return f"split changed: {made['split']}, not {wanted['split']}"
    digests = made["params"].get("input_digests")
    if digests is None:
        return "made by an earlier version, which kept no digests of its input CSVs"
    changed = [f"{PARAMETER_NAMES.get(key, key)} changed" for key, value in wanted["params"].items()
               if key != "input_digests" and value != made["params"].get(key)]
    changed += [_csv_change(name, digests.get(name), digest)
                for name, digest in wanted["params"]["input_digests"].items() if digests.get(name) != digest]
    return ", ".join(sorted(changed)) or "split changed"


def _csv_change(name: str, made: str | None, now: str | None) -> str:
    """How one input CSV differs from the one a cache was made from (digests; None: the file is absent)."""
    if now is None:
        return f"{name} CSV now missing"
    return f"{name} CSV added" if made is None else f"{name} CSV content changed"


def _prepare_work_dir(out: Path, params: IngestSettings) -> Path:
    """The work folder of this ingest: reused when its parameters match (temporary files and an unfinished
    final store removed), created otherwise; CacheError for another ingest's work folder."""
    work = _work_dir(out)
    if work.exists():
        if _work_params(out) != params.attrs():
            raise CacheError(f"{work} holds an interrupted ingest with other parameters; "
                             "run that ingest again or remove the folder")
        for stale in (work / "parts").glob("*.tmp"):
            stale.unlink()
        return work
    if out.exists():
        raise CacheError(f"{out} exists and is not a lumbar-fast cache of this data; choose another --out")
    fresh = work.with_name(work.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    (fresh / "parts").mkdir(parents=True)
    (fresh / "params.json").write_text(json.dumps(params.attrs(), indent=1))
    os.replace(fresh, work)
    return work


def _work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".ingest")


def _work_params(out: Path) -> dict | None:
    file = _work_dir(out) / "params.json"
    return json.loads(file.read_text()) if file.is_file() else None


def input_digests(params: IngestSettings) -> dict[str, str | None]:
    """SHA-256 of each CSV the ingest reads, so that a rerun after one changed (new located coordinates at
    the same path) is not taken for an up-to-date cache; None for a file that is absent."""
    descriptions = Path(params.data_dir) / f"{params.split}_series_descriptions.csv"
    files = {"series_descriptions": descriptions, **dict(zip(("labels", "coordinates"), label_files(params),
                                                             strict=True))}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() if path and path.is_file() else None
            for name, path in files.items()}


def worker_count(workers: int | None) -> int:
    """The worker processes ingest starts: `workers`, or one per usable core when None."""
    return max(1, workers if workers else len(os.sched_getaffinity(0)))
