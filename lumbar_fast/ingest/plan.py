"""Ingest's first stage: read and check the split's CSVs (series descriptions, labels, coordinates) into one
task per series to convert, the studies' labels, and the error rows visible without decoding any DICOM."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar_fast import cache, rsna
from lumbar_fast.cache import IngestSettings
from lumbar_fast.csvfile import FLOAT, INT, TEXT, read_csv
from lumbar_fast.errors import DataError

DESCRIPTION_COLUMNS = {"study_id": INT, "series_id": INT, "series_description": TEXT}


COORDINATE_COLUMNS = dict(zip(rsna.COORDINATE_COLUMNS, (INT, INT, INT, TEXT, TEXT, FLOAT, FLOAT),
                              strict=True))


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
class IngestPlan:
    """What the CSVs ask for: the series to convert, the studies' labels and the problems found already."""

    tasks: list[SeriesTask]
    study_labels: pd.DataFrame
    errors: pd.DataFrame
    series_listed: int


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
    labels_file, coordinates_file = label_files(params)
    study_labels, unlisted = read_study_labels(labels_file, studies, set(listed["study_id"]))
    coordinates = (read_csv(coordinates_file, COORDINATE_COLUMNS, "coordinates") if coordinates_file
                   else cache.empty_table({c: "object" for c in COORDINATE_COLUMNS}))
    level_labels, label_errors = _level_labels(coordinates, listed, descriptions, study_labels)
    errors += unlisted + label_errors
    tasks = []
    for row in descriptions.sort_values(["study_id", "series_id"]).itertuples(index=False):
        folder = images / str(row.study_id) / str(row.series_id)
        sequence = rsna.sequence_of_description(row.series_description)
        problem = (f"unknown series description: {row.series_description!r}" if sequence is None
                   else "series folder missing" if not folder.is_dir() else None)
        if problem:
            errors.append(error_row(row.study_id, row.series_id, folder, problem))
            continue
        tasks.append(SeriesTask(int(row.study_id), int(row.series_id), sequence, folder,
                                tuple(level_labels.get((row.study_id, row.series_id), ()))))
    return IngestPlan(tasks, study_labels, cache.typed_table(errors, cache.ERROR_COLUMNS), len(descriptions))


def _unique_series(descriptions: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """One row per (study, series): a series listed twice with one description (as matched: case and spaces
    aside) is ingested once, with different ones not at all; each is an error row."""
    keys = ["study_id", "series_id"]
    named = descriptions.assign(
        sequence=[rsna.sequence_of_description(d) or str(d) for d in descriptions["series_description"]])
    seen = named.groupby(keys).agg(size=("sequence", "size"), nunique=("sequence", "nunique"),
                                   unique=("series_description", "unique"))
    errors = [error_row(study, series, "", f"series listed {row['size']} times in the series descriptions: "
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
    if raw.empty:  # every label would be missing, and training would fail much later
        raise DataError(f"labels file {path} lists no study (a header alone)")
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
    unlisted = [error_row(study, -1, path, "labelled study not listed in the series descriptions")
                for study in sorted(set(raw["study_id"]) - listed)]
    merged = table.merge(raw, on="study_id", how="left")
    return cache.typed_table(merged.fillna(rsna.MISSING), cache.STUDY_LABEL_COLUMNS), unlisted


def _level_labels(coordinates: pd.DataFrame, listed: pd.DataFrame, descriptions: pd.DataFrame,
                  study_labels: pd.DataFrame) -> tuple[dict[tuple[int, int], list[LevelLabel]], list[dict]]:
    """Coordinate rows of the cache's studies (and of studies the descriptions do not list) grouped by
    (study, series), with their severities; rows that cannot be used become error rows, a row listed twice is
    cropped once."""
    series_sequence = {(s, r): rsna.sequence_of_description(d) for s, r, d in
                       descriptions[list(DESCRIPTION_COLUMNS)].itertuples(index=False)}
    severities = study_labels.set_index("study_id")
    limited_out = set(listed["study_id"]) - set(severities.index)
    rows = coordinates[~coordinates["study_id"].isin(limited_out)]
    errors = [error_row(row.study_id, row.series_id, "", f"coordinate row listed {count} times: cropped once")
              for row, count in _repeated(rows)]
    grouped: dict[tuple[int, int], list[LevelLabel]] = {}
    unlisted: dict[tuple[int, int], int] = {}  # one error row per series, not one per point
    for row in rows.drop_duplicates().sort_values(list(COORDINATE_COLUMNS)[:5]).itertuples(index=False):
        if (row.study_id, row.series_id) not in series_sequence:
            unlisted[row.study_id, row.series_id] = unlisted.get((row.study_id, row.series_id), 0) + 1
            continue
        condition, level = rsna.CONDITION_FROM_TITLE.get(row.condition), rsna.LEVEL_FROM_TITLE.get(row.level)
        problem = _label_problem(row, condition, level, series_sequence)
        if problem:
            errors.append(error_row(row.study_id, row.series_id, "", problem))
            continue
        severity = int(severities.at[row.study_id, f"{condition}_{level}"])
        grouped.setdefault((row.study_id, row.series_id), []).append(
            LevelLabel(condition, level, int(row.instance_number), float(row.x), float(row.y), severity))
    errors += [error_row(study, series, "", f"labelled series not listed in the series descriptions: {count} "
                         "coordinate row(s)") for (study, series), count in unlisted.items()]
    return grouped, errors


def _repeated(rows: pd.DataFrame) -> list[tuple[object, int]]:
    """Each row that occurs more than once in `rows` (all columns equal), with its count."""
    counts = rows.groupby(list(rows.columns), dropna=False).size()
    return [(row, count) for row, count in zip(counts[counts > 1].index.to_frame().itertuples(index=False),
                                                counts[counts > 1], strict=True)]


def _label_problem(row, condition: str | None, level: str | None,
                   series_sequence: dict[tuple[int, int], str | None]) -> str | None:
    """Why a coordinate row of a listed series cannot become a level crop, or None when it can."""
    key = (row.study_id, row.series_id)
    if condition is None or level is None:
        return f"unknown condition or level: {row.condition!r} {row.level!r}"
    if not (np.isfinite(row.x) and np.isfinite(row.y)):
        return f"labelled point is not finite: x={row.x} y={row.y}"
    sequence = series_sequence[key]
    if sequence is not None and sequence != rsna.SEQUENCE_OF_CONDITION[condition]:
        return f"condition labelled on another sequence: {row.condition} on a {sequence} series"
    return None


def label_files(params: IngestSettings) -> tuple[Path | None, Path | None]:
    """The train.csv-format and coordinates CSVs an ingest reads: as given, or the train split's own."""
    root, train = Path(params.data_dir), params.split == "train"
    labels = params.labels or (root / "train.csv" if train else None)
    coordinates = params.coordinates or (root / "train_label_coordinates.csv" if train else None)
    return (Path(labels) if labels else None), (Path(coordinates) if coordinates else None)


def error_row(study_id: int, series_id: int, path: Path | str, reason: str) -> dict:
    """One row of the cache's errors table (cache.ERROR_COLUMNS), from any stage."""
    return {"study_id": int(study_id), "series_id": int(series_id), "path": str(path), "reason": reason}
