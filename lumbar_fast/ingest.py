"""Parallel, resumable DICOM -> cache conversion (the one place where DICOM decoding is paid).

Worker processes each turn one series into uint8 stack images, level crops and tables, and commit it as
one part file (`<out>.ingest/parts/{study}_{series}.pkl`, written under a temporary name and renamed, so a
part is complete or absent). The main process alone appends the parts to the final Zarr or HDF5 store in
sorted (study_id, series_id) order, each as soon as all before it are committed, and writes the tables and
the attributes last. A Zarr store records in its journal what it holds (series, tables), now and then, and
the parts it records are deleted, so parts never fill the disk beside the store.
A killed run is resumed by running it again: complete parts are kept, temporary files dropped, a Zarr store
appended to from its last record (an HDF5 file rebuilt from the parts); the result equals an uninterrupted
run's.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import queue
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from lumbar_fast import __version__, cache, dicom, rsna
from lumbar_fast.cache import DEFAULT_CHANNELS, DEFAULT_CROP_MM, ImageSettings, IngestSettings
from lumbar_fast.csvfile import FLOAT, INT, TEXT, read_csv
from lumbar_fast.errors import CacheError, DataError, typed_line
from lumbar_fast.processes import pool_context

DESCRIPTION_COLUMNS = {"study_id": INT, "series_id": INT, "series_description": TEXT}
COORDINATE_COLUMNS = dict(zip(rsna.COORDINATE_COLUMNS, (INT, INT, INT, TEXT, TEXT, FLOAT, FLOAT),
                              strict=True))
#: the consolidator records what the store holds, and deletes those parts, once the parts not yet recorded
#: reach this fraction of the image bytes appended (so records grow geometrically: a few hundred per ingest)
RECORD_FRACTION = 0.05
#: the tables each journal record holds (stack index and level labels with their sequence; the series)
JOURNAL_TABLES: dict[str, dict[str, str]] = {
    "stack_index": {**cache.STACK_INDEX_COLUMNS, "sequence": "object"},
    "level_labels": {**cache.LEVEL_LABEL_COLUMNS, "sequence": "object"},
    "errors": cache.ERROR_COLUMNS,
    "series": {"study_id": "int64", "series_id": "int64"},
}
#: a series starts converting only within this many series per worker of the next one to append
AHEAD_PER_WORKER = 2
#: test hook: the ingest process SIGKILLs itself after appending this many series (the kill-and-resume tests)
KILL_AFTER_ENV = "LUMBAR_FAST_INGEST_KILL_AFTER"


@dataclass(frozen=True)
class LevelLabel:
    """One labelled point to crop: where (instance, x, y) and what (condition, level, severity)."""

    condition: str
    level: str
    instance_number: int
    x: float
    y: float
    severity: int


@dataclass(frozen=True)
class SeriesTask:
    """One series to convert."""

    study_id: int
    series_id: int
    sequence: str
    folder: Path
    labels: tuple[LevelLabel, ...]

    @property
    def part_name(self) -> str:
        return f"{self.study_id}_{self.series_id}.pkl"


@dataclass
class SeriesPart:
    """A converted series: its tables (stack_row local to this part) and its images."""

    task: SeriesTask
    stack_index: pd.DataFrame
    level_labels: pd.DataFrame
    errors: pd.DataFrame
    stack_images: np.ndarray  # (n, S, S) uint8
    level_images: np.ndarray  # (m, S, S, C) uint8


@dataclass
class IngestPlan:
    """What the CSVs ask for: the series to convert, the studies' labels and the problems found already."""

    tasks: list[SeriesTask]
    study_labels: pd.DataFrame
    errors: pd.DataFrame
    series_listed: int


@dataclass
class IngestSummary:
    """What one `ingest` call did."""

    out: Path
    up_to_date: bool = False
    series: int = 0
    series_converted: int = 0
    series_resumed: int = 0
    slices: int = 0
    level_crops: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds else 0.0


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
    params = replace(settings, data_dir=_resolved(settings.data_dir),
                     coordinates=_resolved(settings.coordinates), labels=_resolved(settings.labels))
    params.check()
    params = replace(params, input_digests=_input_digests(params))
    out = Path(out)
    finished = _finished_summary(out, params)
    if finished is not None:
        return finished
    plan = plan_ingest(params)
    work = _prepare_work_dir(out, params)
    parts = work / "parts"
    writer = Consolidator(plan, params, parts, out)
    done = {p.name for p in parts.glob("*.pkl")}
    todo = [task for task in plan.tasks if task.part_name not in done | writer.recorded]
    writer.advance()
    counts = _convert_all(todo, params, parts, _worker_count(workers), progress, writer)
    summary = writer.finish()
    shutil.rmtree(work)
    summary.series_converted = counts["series"]
    summary.series_resumed = len(plan.tasks) - len(todo)
    summary.seconds = time.perf_counter() - started
    return summary


def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def plan_ingest(params: IngestSettings) -> IngestPlan:
    """Read the split's CSVs into series tasks, study labels and the errors visible without decoding."""
    root = Path(params.data_dir)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    images = root / f"{params.split}_images"
    listed = read_csv(root / f"{params.split}_series_descriptions.csv", DESCRIPTION_COLUMNS,
                      "series descriptions")
    if not images.is_dir():
        raise DataError(f"{root} has no {images.name}/ folder: is it an RSNA 2024 data folder?")
    if listed.empty:
        raise DataError(f"{params.split}_series_descriptions.csv in {root} lists no series")
    studies = sorted(listed["study_id"].unique())[:params.limit_studies]
    descriptions, errors = _unique_series(listed[listed["study_id"].isin(studies)])
    labels_file, coordinates_file = _label_files(params)
    study_labels, unlisted = read_study_labels(labels_file, studies, set(listed["study_id"]))
    coordinates = (read_csv(coordinates_file, COORDINATE_COLUMNS, "coordinates") if coordinates_file
                   else cache.empty_table({c: "object" for c in COORDINATE_COLUMNS}))
    level_labels, label_errors = _level_labels(coordinates, listed, descriptions, study_labels)
    errors += unlisted + label_errors
    tasks = []
    for row in descriptions.sort_values(["study_id", "series_id"]).itertuples(index=False):
        folder = images / str(row.study_id) / str(row.series_id)
        sequence = rsna.SEQUENCE_FROM_DESCRIPTION.get(row.series_description)
        problem = (f"unknown series description: {row.series_description!r}" if sequence is None
                   else "series folder missing" if not folder.is_dir() else None)
        if problem:
            errors.append(_error(row.study_id, row.series_id, folder, problem))
            continue
        tasks.append(SeriesTask(int(row.study_id), int(row.series_id), sequence, folder,
                                tuple(level_labels.get((row.study_id, row.series_id), ()))))
    return IngestPlan(tasks, study_labels, cache.typed_table(errors, cache.ERROR_COLUMNS), len(descriptions))


def _unique_series(descriptions: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """One row per (study, series): a series listed twice with one description is ingested once, with
    different ones not at all; each is an error row."""
    keys = ["study_id", "series_id"]
    seen = descriptions.groupby(keys)["series_description"].agg(["size", "nunique", "unique"])
    errors = [_error(study, series, "", f"series listed {row['size']} times in the series descriptions: "
                     + ("ingested once" if row["nunique"] == 1 else
                        f"not ingested (descriptions {', '.join(map(repr, row['unique']))})"))
              for (study, series), row in seen[seen["size"] > 1].iterrows()]
    conflicting = seen.index[seen["nunique"] > 1]
    kept = descriptions.drop_duplicates(keys).set_index(keys).drop(index=conflicting).reset_index()
    return kept, errors


def read_study_labels(path: str | Path | None, studies: list[int], listed: set[int]
                      ) -> tuple[pd.DataFrame, list[dict]]:
    """train.csv-format labels as int8 class ids for `studies` (-1 where missing or the file is absent), and
    an error row per labelled study the series descriptions do not list at all (`listed`: those they do).

    A study listed twice, or a severity that is not one of rsna.SEVERITIES, is a one-line DataError: which
    row holds a study's labels would be a guess."""
    table = pd.DataFrame({"study_id": np.asarray(studies, dtype=np.int64)})
    if path is None:
        return cache.typed_table(table.assign(**{c: rsna.MISSING for c in rsna.LABEL_COLUMNS}),
                                 cache.STUDY_LABEL_COLUMNS), []
    raw = read_csv(path, rsna.LABELS_CSV, "labels")
    twice = np.flatnonzero(raw["study_id"].duplicated().to_numpy())
    if len(twice):
        raise DataError(f"labels file {path}, row {twice[0] + 1}: study {raw['study_id'].iloc[twice[0]]} is "
                        "listed twice")
    for column in rsna.LABEL_COLUMNS:
        unknown = ~raw[column].isna() & ~raw[column].isin(list(rsna.SEVERITY_FROM_NAME))
        if unknown.any():
            row = int(np.flatnonzero(unknown.to_numpy())[0])
            raise DataError(f"labels file {path}, column {column}, row {row + 1}: unknown severity "
                            f"{raw[column].iloc[row]!r}")
        raw[column] = raw[column].map(rsna.SEVERITY_FROM_NAME).fillna(rsna.MISSING)
    unlisted = [_error(study, -1, path, "labelled study not listed in the series descriptions")
                for study in sorted(set(raw["study_id"]) - listed)]
    merged = table.merge(raw, on="study_id", how="left")
    return cache.typed_table(merged.fillna(rsna.MISSING), cache.STUDY_LABEL_COLUMNS), unlisted


def convert_series(task: SeriesTask, params: IngestSettings) -> SeriesPart:
    """Decode one series into windowed, resized stack images and its level crops, with their tables; an
    exception no check foresaw becomes the series' error row, so that it cannot end the ingest."""
    try:
        return _convert(task, params)
    except Exception as exc:
        reason = f"series cannot be converted: {typed_line(exc)}"
        return _part(task, params, [], [], [_error(task.study_id, task.series_id, task.folder, reason)],
                     [], [])


def _convert(task: SeriesTask, params: IngestSettings) -> SeriesPart:
    """convert_series without the safety net."""
    scan = dicom.read_series(task.folder)
    errors = [_error(task.study_id, task.series_id, path, reason) for path, reason in scan.errors]
    if not scan.slices:
        reason = "empty series: no usable image" if scan.errors else "empty series: no .dcm files"
        errors.append(_error(task.study_id, task.series_id, task.folder, reason))
    window = dicom.series_window(scan.slices) if scan.slices else (0.0, 1.0)
    originals = [[dicom.to_uint8(s.pixels, window) for s in stack.slices] for stack in scan.stacks]
    stack_images, index_rows = _stack_items(task, scan, originals, params.images.size)
    crops, level_rows = _level_items(task, scan, originals, params, errors)
    return _part(task, params, index_rows, level_rows, errors, stack_images, crops)


def _part(task: SeriesTask, params: IngestSettings, index_rows: list[dict], level_rows: list[dict],
          errors: list[dict], stack_images: list[np.ndarray], crops: list[np.ndarray]) -> SeriesPart:
    """A SeriesPart of typed tables and stacked images (empty arrays of the right shape when none)."""
    size, channels = params.images.size, params.images.channels
    return SeriesPart(
        task=task,
        stack_index=cache.typed_table(index_rows, cache.STACK_INDEX_COLUMNS),
        level_labels=cache.typed_table(level_rows, cache.LEVEL_LABEL_COLUMNS),
        errors=cache.typed_table(errors, cache.ERROR_COLUMNS),
        stack_images=np.stack(stack_images) if stack_images else np.zeros((0, size, size), np.uint8),
        level_images=np.stack(crops) if crops else np.zeros((0, size, size, channels), np.uint8),
    )


def _stack_items(task: SeriesTask, scan: dicom.SeriesScan, originals: list[list[np.ndarray]],
                 size: int) -> tuple[list[np.ndarray], list[dict]]:
    """Every slice of the series resized to size×size, stack by stack, with its index row."""
    images, rows = [], []
    for stack_id, (stack, windowed) in enumerate(zip(scan.stacks, originals, strict=True)):
        for slice_id, (item, image) in enumerate(zip(stack.slices, windowed, strict=True)):
            images.append(dicom.resize(image, size))
            rows.append({
                "study_id": task.study_id, "series_id": task.series_id, "stack": stack_id, "slice": slice_id,
                "instance_number": item.instance_number, "position": item.location,
                "rows": image.shape[0], "cols": image.shape[1],
                "spacing_row": item.spacing[0], "spacing_col": item.spacing[1],
            })
    return images, rows


def _level_items(task: SeriesTask, scan: dicom.SeriesScan, originals: list[list[np.ndarray]],
                 params: IngestSettings, errors: list[dict]) -> tuple[list[np.ndarray], list[dict]]:
    """The 2.5D crop of every label of the series with its label row; a label whose instance is not
    among the usable slices becomes an error row."""
    crops, rows = [], []
    stack_start = np.cumsum([0] + [len(stack.slices) for stack in scan.stacks])
    for label in task.labels:
        found = scan.find_instance(label.instance_number)
        problem = (f"labelled instance missing or unusable: {label.condition} {label.level}" if found is None
                   else _outside(label, originals[found[0]][found[1]].shape))
        if problem:
            errors.append(_error(task.study_id, task.series_id, task.folder / f"{label.instance_number}.dcm",
                                 problem))
            continue
        stack_id, slice_id = found
        labelled = scan.stacks[stack_id].slices[slice_id]
        images = params.images
        crop = dicom.level_crop(originals[stack_id], slice_id, label.x, label.y, labelled.spacing,
                                images.crop_mm[task.sequence], images.size, images.channels)
        if images.canonical_side and mirrored_to_canonical_side(label.condition, labelled.orientation):
            crop = np.ascontiguousarray(crop[:, ::-1])
        crops.append(crop)
        rows.append({
            "study_id": task.study_id, "series_id": task.series_id, "condition": label.condition,
            "level": label.level, "severity": label.severity, "stack": stack_id, "slice": slice_id,
            "instance_number": label.instance_number, "x": label.x, "y": label.y,
            "stack_row": int(stack_start[stack_id] + slice_id),
        })
    return crops, rows


def _outside(label: LevelLabel, shape: tuple[int, ...]) -> str | None:
    """Why a labelled point lies outside its image of `shape` (rows, cols), or None when it lies inside."""
    rows, cols = shape[:2]
    if 0 <= label.x < cols and 0 <= label.y < rows:
        return None
    return (f"labelled point outside its image: {label.condition} {label.level} at x={label.x:g} "
            f"y={label.y:g} in {cols}×{rows} pixels")


def mirrored_to_canonical_side(condition: str, orientation: np.ndarray) -> bool:
    """Whether a crop of `condition` on a slice of ImageOrientationPatient `orientation` is mirrored left to
    right so that the patient's midline lies to the image's left of the crop centre.

    A subarticular crop holds both recesses, which carry independent labels: in canonical side the graded
    one is always the right-hand recess of the image, whatever side it is and however the rows run (the
    patient's left is +x, so a row cosine with positive x runs towards the patient's left).
    """
    if rsna.CONDITION_GROUP[condition] != "subarticular":
        return False
    medial_is_plus_x = condition.startswith("right_")  # the midline lies towards the patient's left
    rows_run_plus_x = float(orientation[0]) >= 0.0
    return medial_is_plus_x == rows_run_plus_x


class Consolidator:
    """The single writer of the final cache: it appends each committed part in task order as soon as every
    earlier part is committed too (so it writes while the workers convert), and ends with the tables and
    the attributes.

    In a resumable format it records in the store's journal, now and then, the series appended so far whose
    images are all written (the appenders hold back a partial chunk), per sequence in order, with their
    tables, and then deletes their part files: parts on disk stay a small fraction of the store, and a rerun
    after a kill resumes from what the store records.
    """

    def __init__(self, plan: IngestPlan, params: IngestSettings, parts: Path, out: Path) -> None:
        self.plan, self.params, self.parts, self.out = plan, params, parts, out
        self.writer, journal = _open_store(out, params.fmt)
        self.recording = params.fmt in cache.RESUMABLE_FORMATS
        journal = journal or cache.Journal(0, {}, [])
        self.recorded_tables, self.recorded_rows = journal.records, journal.rows
        self.recorded = {f"{s}_{r}.pkl" for record in journal.records
                         for s, r in record["series"].itertuples(index=False)}
        self.unrecorded: list[_Appended] = []
        self.position = {task.part_name: i for i, task in enumerate(plan.tasks)}
        self.cursor = self.appended_here = self.appended_bytes = 0
        self.appenders = {seq: self._appenders(seq, journal.rows) for seq in rsna.SEQUENCES
                          if f"stacks/{seq}/images" in journal.rows}
        self.kill_after = int(os.environ.get(KILL_AFTER_ENV, 0))
        for name in self.recorded:  # a kill between a record and the deletion of its parts
            (parts / name).unlink(missing_ok=True)

    def ahead(self, task: SeriesTask) -> int:
        """How many series `task` lies ahead of the next one to append."""
        return self.position[task.part_name] - self.cursor

    def advance(self) -> None:
        """Append every part from the cursor on that is committed already."""
        while self.cursor < len(self.plan.tasks):
            name = self.plan.tasks[self.cursor].part_name
            if name not in self.recorded:
                if not (self.parts / name).exists():
                    return
                self._append_part(self.parts / name)
            self.cursor += 1

    def finish(self) -> IngestSummary:
        """Append the remaining parts, write the tables, then the attributes that mark the cache done."""
        self.advance()
        if self.cursor != len(self.plan.tasks):
            raise RuntimeError(f"part {self.plan.tasks[self.cursor].part_name} was never committed")
        tables = [*self.recorded_tables, *(entry.tables for entry in self.unrecorded)]
        index, labels, errors = (_concat(tables, name) for name in ("stack_index", "level_labels", "errors"))
        for seq, appenders in self.appenders.items():
            for appender in appenders:
                appender.close()
            self.writer.table(f"stacks/{seq}/index", cache.typed_table(index[index["sequence"] == seq],
                                                                       cache.STACK_INDEX_COLUMNS))
            self.writer.table(f"levels/{seq}/labels", cache.typed_table(labels[labels["sequence"] == seq],
                                                                        cache.LEVEL_LABEL_COLUMNS))
        errors = pd.concat([self.plan.errors, errors]).sort_values(list(cache.ERROR_COLUMNS))
        errors = cache.typed_table(errors, cache.ERROR_COLUMNS)
        self.writer.table("errors", errors)
        self.writer.table("study_labels", self.plan.study_labels)
        counts = {"slices": sum(a[0].rows for a in self.appenders.values()),
                  "level_crops": sum(a[1].rows for a in self.appenders.values())}
        source = {"data_dir": self.params.data_dir, "studies": len(self.plan.study_labels),
                  "series_listed": self.plan.series_listed, "series_ingested": len(self.plan.tasks), **counts,
                  "errors": len(errors)}
        self.writer.finish({"params": self.params.attrs(), "split": self.params.split, "source": source,
                            "lumbar_fast_version": __version__})
        return IngestSummary(out=self.out, series=len(self.plan.tasks), slices=counts["slices"],
                             level_crops=counts["level_crops"], errors=len(errors),
                             error_reasons=cache.reason_counts(errors))

    def _appenders(self, seq: str, rows: dict[str, int]) -> tuple[cache.ImageAppender, cache.ImageAppender]:
        """The stack and level-crop appenders of `seq`, over arrays holding `rows` items already."""
        size, channels = self.params.images.size, self.params.images.channels
        stacks, levels = f"stacks/{seq}/images", f"levels/{seq}/images"
        return (self.writer.images(stacks, (size, size), rows.get(stacks, 0)),
                self.writer.images(levels, (size, size, channels), rows.get(levels, 0)))

    def _append_part(self, path: Path) -> None:
        """Append one committed part, record what is due, and die here if the kill test asks."""
        with open(path, "rb") as handle:
            self._append(pickle.load(handle), path.stat().st_size)
        if self.recording:
            self._record_if_due()
        self.appended_here += 1
        if self.appended_here == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # the kill-and-resume tests' crash point (KILL_AFTER_ENV)

    def _append(self, part: SeriesPart, part_bytes: int) -> None:
        seq = part.task.sequence
        entry = _Appended(part.task.part_name, seq, part_bytes, {}, {
            "series": pd.DataFrame({"study_id": [part.task.study_id], "series_id": [part.task.series_id]}),
            "stack_index": part.stack_index.assign(sequence=seq), "errors": part.errors,
            "level_labels": part.level_labels.assign(sequence=seq)})
        if len(part.stack_images):
            if seq not in self.appenders:
                self.appenders[seq] = self._appenders(seq, {})
            stacks, levels = self.appenders[seq]
            entry.tables["level_labels"]["stack_row"] += stacks.rows
            stacks.append(part.stack_images)
            levels.append(part.level_images)
            entry.ends = {f"stacks/{seq}/images": stacks.rows, f"levels/{seq}/images": levels.rows}
            self.appended_bytes += part.stack_images.nbytes + part.level_images.nbytes
        self.unrecorded.append(entry)

    def _record_if_due(self) -> None:
        """Record the unrecorded series whose images are all written, and all before them of their sequence,
        in the store's journal, then delete their parts, once those reach RECORD_FRACTION of the image bytes
        appended."""
        done = self._written_series()
        if not done or sum(entry.part_bytes for entry in done) < RECORD_FRACTION * self.appended_bytes:
            return
        for entry in done:
            self.recorded_rows = {**self.recorded_rows, **entry.ends}
        record = {name: _concat([entry.tables for entry in done], name) for name in JOURNAL_TABLES}
        self.recorded |= {entry.part_name for entry in done}
        self.writer.record(record, len(self.recorded), self.recorded_rows)
        for entry in done:
            (self.parts / entry.part_name).unlink()
        self.recorded_tables.append(record)
        self.unrecorded = [entry for entry in self.unrecorded if entry.part_name not in self.recorded]

    def _written_series(self) -> list[_Appended]:
        """The unrecorded series whose images the store holds in complete chunks, and every unrecorded series
        before them of their sequence too, in order."""
        written = {f"{kind}/{seq}/images": appender.written for seq, pair in self.appenders.items()
                   for kind, appender in zip(("stacks", "levels"), pair, strict=True)}
        blocked: set[str] = set()
        done = []
        for entry in self.unrecorded:
            if entry.sequence not in blocked and all(end <= written[n] for n, end in entry.ends.items()):
                done.append(entry)
            else:
                blocked.add(entry.sequence)
        return done


@dataclass
class _Appended:
    """A series appended to the store but not yet recorded in its journal: its part file (still on disk),
    the rows each of its image arrays needs written, its tables."""

    part_name: str
    sequence: str
    part_bytes: int
    ends: dict[str, int]
    tables: dict[str, pd.DataFrame]


def _convert_all(tasks: list[SeriesTask], params: IngestSettings, parts: Path, workers: int,
                 progress: bool, writer: Consolidator) -> dict[str, int]:
    """Convert `tasks` into part files with `workers` processes (in-process for 1), letting `writer`
    append after each; a task starts only within AHEAD_PER_WORKER × workers series of the writer's next, so
    that parts cannot pile up on disk when the writer is slower than the workers. A progress bar shows
    series/s, slices/s and the ETA."""
    counts = {"series": 0, "slices": 0}
    job = partial(_convert_and_commit, params=params, parts=parts)
    started = time.perf_counter()
    with tqdm(total=len(tasks), desc="ingest", unit="series", disable=not progress or not tasks) as bar:
        for slices in _map(job, tasks, workers, lambda task: writer.ahead(task) < AHEAD_PER_WORKER * workers):
            counts["series"] += 1
            counts["slices"] += slices
            writer.advance()
            bar.set_postfix_str(f"{counts['slices'] / (time.perf_counter() - started):.0f} slices/s")
            bar.update()
    return counts


def _map(job: Callable[[SeriesTask], int], tasks: list[SeriesTask], workers: int,
         admits: Callable[[SeriesTask], bool]) -> Iterator[int]:
    """Results of `job` over `tasks`, in completion order, from `workers` processes; the next task starts
    when a process is free and `admits` it (or when none is in flight)."""
    if workers == 1 or len(tasks) <= 1:
        yield from map(job, tasks)
        return
    results: queue.SimpleQueue = queue.SimpleQueue()
    waiting, in_flight = deque(tasks), 0
    with pool_context().Pool(min(workers, len(tasks))) as pool:
        while waiting or in_flight:
            while waiting and in_flight < workers and (not in_flight or admits(waiting[0])):
                pool.apply_async(job, (waiting.popleft(),), callback=results.put, error_callback=results.put)
                in_flight += 1
            result = results.get()
            in_flight -= 1
            if isinstance(result, BaseException):
                raise result
            yield result


def _convert_and_commit(task: SeriesTask, params: IngestSettings, parts: Path) -> int:
    """Convert one series and commit it as a part file (temporary name, then an atomic rename); returns
    its slice count."""
    part = convert_series(task, params)
    target = parts / task.part_name
    partial_file = target.with_suffix(f".{os.getpid()}.tmp")
    with open(partial_file, "wb") as handle:
        pickle.dump(part, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial_file, target)
    return len(part.stack_images)


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


def _changes(made: dict, wanted: dict) -> str:
    """What differs between a cache's recorded parameters and a rerun's, by name (CSVs by their role)."""
    digests = made["params"].get("input_digests")
    if digests is None:
        return "made by an earlier version, which kept no digests of its input CSVs"
    changed = [key for key, value in wanted["params"].items()
               if key != "input_digests" and value != made["params"].get(key)]
    changed += [f"{name} CSV content" for name, digest in wanted["params"]["input_digests"].items()
                if digests.get(name) != digest]
    return f"{', '.join(sorted(changed)) or 'split'} changed"


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


def _open_store(out: Path, fmt: str) -> tuple[cache.CacheWriter, cache.Journal | None]:
    """The store to append to and what its journal records: the unfinished one at `out` when it records
    something, else a new one (also when a kill left it unreadable: its series are then converted again)."""
    if out.exists() and fmt in cache.RESUMABLE_FORMATS:
        try:
            writer = cache.CacheWriter(out, fmt, resume=True)
            journal = writer.journal()
        except Exception:  # a store damaged by a killed writer fails inside zarr
            journal = None
        if journal is not None:
            return writer, journal
    _remove(out)
    return cache.CacheWriter(out, fmt), None


def _concat(tables: list[dict[str, pd.DataFrame]], name: str) -> pd.DataFrame:
    """Journal table `name` of every entry of `tables`, one after the other (typed as JOURNAL_TABLES)."""
    found, columns = [entry[name] for entry in tables], JOURNAL_TABLES[name]
    if not found:
        return cache.empty_table(columns)
    return cache.typed_table(pd.concat(found, ignore_index=True), columns)


def _work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".ingest")


def _work_params(out: Path) -> dict | None:
    file = _work_dir(out) / "params.json"
    return json.loads(file.read_text()) if file.is_file() else None


def _label_files(params: IngestSettings) -> tuple[Path | None, Path | None]:
    """The train.csv-format and coordinates CSVs an ingest reads: as given, or the train split's own."""
    root, train = Path(params.data_dir), params.split == "train"
    labels = params.labels or (root / "train.csv" if train else None)
    coordinates = params.coordinates or (root / "train_label_coordinates.csv" if train else None)
    return (Path(labels) if labels else None), (Path(coordinates) if coordinates else None)


def _input_digests(params: IngestSettings) -> dict[str, str | None]:
    """SHA-256 of each CSV the ingest reads, so that a rerun after one changed (new located coordinates at
    the same path) is not taken for an up-to-date cache; None for a file that is absent."""
    descriptions = Path(params.data_dir) / f"{params.split}_series_descriptions.csv"
    files = {"series_descriptions": descriptions, **dict(zip(("labels", "coordinates"), _label_files(params),
                                                             strict=True))}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() if path and path.is_file() else None
            for name, path in files.items()}


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _level_labels(coordinates: pd.DataFrame, listed: pd.DataFrame, descriptions: pd.DataFrame,
                  study_labels: pd.DataFrame) -> tuple[dict[tuple[int, int], list[LevelLabel]], list[dict]]:
    """Coordinate rows of the cache's studies (and of studies the descriptions do not list) grouped by
    (study, series), with their severities; rows that cannot be used become error rows, a row listed twice is
    cropped once."""
    series_sequence = {(s, r): rsna.SEQUENCE_FROM_DESCRIPTION.get(d) for s, r, d in
                       descriptions[list(DESCRIPTION_COLUMNS)].itertuples(index=False)}
    severities = study_labels.set_index("study_id")
    limited_out = set(listed["study_id"]) - set(severities.index)
    rows = coordinates[~coordinates["study_id"].isin(limited_out)]
    errors = [_error(row.study_id, row.series_id, "", f"coordinate row listed {count} times: cropped once")
              for row, count in _repeated(rows)]
    grouped: dict[tuple[int, int], list[LevelLabel]] = {}
    for row in rows.drop_duplicates().sort_values(list(COORDINATE_COLUMNS)[:5]).itertuples(index=False):
        condition, level = rsna.CONDITION_FROM_TITLE.get(row.condition), rsna.LEVEL_FROM_TITLE.get(row.level)
        problem = _label_problem(row, condition, level, series_sequence)
        if problem:
            errors.append(_error(row.study_id, row.series_id, "", problem))
            continue
        severity = int(severities.at[row.study_id, f"{condition}_{level}"])
        grouped.setdefault((row.study_id, row.series_id), []).append(
            LevelLabel(condition, level, int(row.instance_number), float(row.x), float(row.y), severity))
    return grouped, errors


def _repeated(rows: pd.DataFrame) -> list[tuple[object, int]]:
    """Each row that occurs more than once in `rows` (all columns equal), with its count."""
    counts = rows.groupby(list(rows.columns), dropna=False).size()
    return [(row, count) for row, count in zip(counts[counts > 1].index.to_frame().itertuples(index=False),
                                                counts[counts > 1], strict=True)]


def _label_problem(row, condition: str | None, level: str | None,
                   series_sequence: dict[tuple[int, int], str | None]) -> str | None:
    """Why a coordinate row cannot become a level crop, or None when it can."""
    key = (row.study_id, row.series_id)
    if key not in series_sequence:
        return "labelled series not listed in the series descriptions"
    if condition is None or level is None:
        return f"unknown condition or level: {row.condition!r} {row.level!r}"
    if not (np.isfinite(row.x) and np.isfinite(row.y)):
        return f"labelled point is not finite: x={row.x} y={row.y}"
    sequence = series_sequence[key]
    if sequence is not None and sequence != rsna.SEQUENCE_OF_CONDITION[condition]:
        return f"condition labelled on another sequence: {row.condition} on a {sequence} series"
    return None


def _error(study_id: int, series_id: int, path: Path | str, reason: str) -> dict:
    return {"study_id": int(study_id), "series_id": int(series_id), "path": str(path), "reason": reason}


def _worker_count(workers: int | None) -> int:
    return max(1, workers if workers else len(os.sched_getaffinity(0)))
