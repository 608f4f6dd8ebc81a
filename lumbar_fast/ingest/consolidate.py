"""Ingest's third stage, in the main process alone: the single writer of the store. It appends the
committed parts in (study_id, series_id) order, each as soon as all before it are committed, and writes the
tables and the attributes last. A Zarr store records in its journal what it holds (series, tables), now and
then, and the parts it records are deleted, so parts never fill the disk beside the store; a killed ingest
appends to the store from its last record (an HDF5 file is rebuilt from the parts)."""

from __future__ import annotations

import itertools
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lumbar_fast import __version__, cache, rsna, testhooks
from lumbar_fast.cache import IngestSettings
from lumbar_fast.ingest.convert import PartFile, SeriesPart
from lumbar_fast.ingest.plan import IngestPlan, SeriesTask

#: the consolidator records what the store holds, and deletes those parts, once the parts not yet recorded
#: reach this fraction of the image bytes appended (so records grow geometrically: a few hundred per ingest)
RECORD_FRACTION = 0.05
#: ... or once they are this many series: the writer holds the tables of the series not yet recorded, and a
#: fraction alone let them grow with the study count (~300 series' tables at the end of a full-scale run)
RECORD_SERIES = 64
#: the tables each journal record holds (stack index and level labels with their sequence; the series)
JOURNAL_TABLES: dict[str, dict[str, str]] = {
    "stack_index": {**cache.STACK_INDEX_COLUMNS, "sequence": "object"},
    "level_labels": {**cache.LEVEL_LABEL_COLUMNS, "sequence": "object"},
    "errors": cache.ERROR_COLUMNS,
    "series": {"study_id": "int64", "series_id": "int64"},
}

#: the columns each journal table has in the finished cache (the per-sequence ones without their sequence)
FINAL_COLUMNS = {"stack_index": cache.STACK_INDEX_COLUMNS, "level_labels": cache.LEVEL_LABEL_COLUMNS,
                 "errors": cache.ERROR_COLUMNS}


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
        self.writer, journal = open_store(out, params.fmt)
        self.recording = params.fmt in cache.RESUMABLE_FORMATS
        journal = journal or cache.Journal(0, {})
        self.recorded_rows = journal.rows
        self.recorded = {f"{s}_{r}.pkl" for table in self.writer.recorded("series")
                         for s, r in table.itertuples(index=False)}
        self.unrecorded: list[_Appended] = []
        self.position = {task.part_name: i for i, task in enumerate(plan.tasks)}
        self.cursor = self.appended_here = self.appended_bytes = 0
        self.appenders = {seq: self._appenders(seq, journal.rows) for seq in rsna.SEQUENCES
                          if f"stacks/{seq}/images" in journal.rows}
        self.kill_after = testhooks.ingest_kill_after()
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
        for seq, appenders in self.appenders.items():
            for appender in appenders:
                appender.close()
            self.writer.table(f"stacks/{seq}/index", self._gathered("stack_index", seq))
            self.writer.table(f"levels/{seq}/labels", self._gathered("level_labels", seq))
        errors = pd.concat([self.plan.errors, self._gathered("errors")])
        errors = cache.typed_table(errors.sort_values(list(cache.ERROR_COLUMNS)), cache.ERROR_COLUMNS)
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

    def _gathered(self, name: str, sequence: str | None = None) -> pd.DataFrame:
        """Journal table `name` of every series appended, only `sequence`'s rows when given, as the cache
        stores it: the recorded ones read back record by record, so that one sequence's table is in memory
        at a time, not the whole journal's (that peak grew with the study count)."""
        unrecorded = (entry.tables[name] for entry in self.unrecorded)
        tables = itertools.chain(self.writer.recorded(name), unrecorded)
        pieces = [table if sequence is None else table[table["sequence"] == sequence] for table in tables]
        return _concat(pieces, FINAL_COLUMNS[name])

    def _appenders(self, seq: str, rows: dict[str, int]) -> tuple[cache.ImageAppender, cache.ImageAppender]:
        """The stack and level-crop appenders of `seq`, over arrays holding `rows` items already."""
        size, channels = self.params.images.size, self.params.images.channels
        stacks, levels = f"stacks/{seq}/images", f"levels/{seq}/images"
        return (self.writer.images(stacks, (size, size), rows.get(stacks, 0)),
                self.writer.images(levels, (size, size, channels), rows.get(levels, 0)))

    def _append_part(self, path: Path) -> None:
        """Append one committed part, record what is due, and die here if the kill test asks. A part left by
        the version before the workers compressed (a SeriesPart: an ingest interrupted before an upgrade) is
        compressed here."""
        with open(path, "rb") as handle:
            part = pickle.load(handle)
        self._append(PartFile.of(part) if isinstance(part, SeriesPart) else part, path.stat().st_size)
        if self.recording:
            self._record_if_due()
        self.appended_here += 1
        testhooks.kill_ingest(self.appended_here, self.kill_after)

    def _append(self, part: PartFile, part_bytes: int) -> None:
        seq = part.task.sequence
        entry = _Appended(part.task.part_name, seq, part_bytes, {}, {
            "series": pd.DataFrame({"study_id": [part.task.study_id], "series_id": [part.task.series_id]}),
            "stack_index": part.stack_index.assign(sequence=seq), "errors": part.errors,
            "level_labels": part.level_labels.assign(sequence=seq)})
        if part.stack_frames:
            if seq not in self.appenders:
                self.appenders[seq] = self._appenders(seq, {})
            stacks, levels = self.appenders[seq]
            entry.tables["level_labels"]["stack_row"] += stacks.rows
            stacks.append(part.stack_frames)
            levels.append(part.level_frames)
            entry.ends = {f"stacks/{seq}/images": stacks.rows, f"levels/{seq}/images": levels.rows}
            self.appended_bytes += sum(map(len, part.stack_frames)) + sum(map(len, part.level_frames))
        self.unrecorded.append(entry)

    def _record_if_due(self) -> None:
        """Record the unrecorded series whose images are all written, and all before them of their sequence,
        in the store's journal, then delete their parts, once those reach RECORD_FRACTION of the image bytes
        appended or RECORD_SERIES series."""
        done = self._written_series()
        due = sum(entry.part_bytes for entry in done) >= RECORD_FRACTION * self.appended_bytes
        if not done or not (due or len(done) >= RECORD_SERIES):
            return
        for entry in done:
            self.recorded_rows = {**self.recorded_rows, **entry.ends}
        record = {name: _concat([entry.tables[name] for entry in done], columns)
                  for name, columns in JOURNAL_TABLES.items()}
        self.recorded |= {entry.part_name for entry in done}
        self.writer.record(record, len(self.recorded), self.recorded_rows)
        for entry in done:
            (self.parts / entry.part_name).unlink()
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


def open_store(out: Path, fmt: str) -> tuple[cache.CacheWriter, cache.Journal | None]:
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


def _concat(tables: list[pd.DataFrame], columns: dict[str, str]) -> pd.DataFrame:
    """`tables` one after the other, as `columns` (names, order, dtypes)."""
    return cache.typed_table(pd.concat(tables) if tables else cache.empty_table(columns), columns)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
