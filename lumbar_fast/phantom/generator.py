"""Build a whole RSNA 2024-layout phantom folder: studies in parallel, then the CSVs and the manifest."""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lumbar_fast import __version__, rsna
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.phantom.answer_key import ANSWER_KEY_CSV, ANSWER_KEY_NAME, answer_key_rows
from lumbar_fast.phantom.grading import model_description
from lumbar_fast.phantom.options import PhantomOptions
from lumbar_fast.phantom.study import SERIES_PER_STUDY, StudyJob, StudyResult, build_study
from lumbar_fast.processes import pool_context

MANIFEST_NAME = "phantom_manifest.json"
SERIES_COLUMNS = ("study_id", "series_id", "series_description")


@dataclass(frozen=True)
class PhantomSummary:
    """What `generate` wrote."""

    out_dir: Path
    train_studies: int
    test_studies: int
    series: int
    files: int
    coordinate_rows: int
    damaged_files: int
    seconds: float


def generate(out_dir: str | Path, n_studies: int, n_test_studies: int = 0,
             options: PhantomOptions | None = None, workers: int | None = None,
             progress: bool = True) -> PhantomSummary:
    """Write a phantom RSNA folder at `out_dir` (new or empty): `n_studies` labelled train studies,
    `n_test_studies` test studies with their labels, phantom_manifest.json and, at real difficulty, the
    answer key phantom_answer_key.csv (p(grade | latent) per label of both splits)."""
    options = options or PhantomOptions()
    started = time.perf_counter()
    root = _prepare_out_dir(out_dir, n_studies, n_test_studies)
    jobs = _jobs(root, n_studies, n_test_studies, options)
    results = list(tqdm(_run(jobs, workers), total=len(jobs), desc="synth", unit="study",
                        disable=not progress))
    train = [r for r in results if r.split == "train"]
    test = [r for r in results if r.split == "test"]
    _write_labels(root / "train.csv", train)
    _write_coordinates(root / "train_label_coordinates.csv", train)
    _write_series(root / "train_series_descriptions.csv", train)
    (root / "test_images").mkdir(exist_ok=True)  # the whole RSNA layout, also without test studies
    _write_series(root / "test_series_descriptions.csv", test)
    _write_submission(root / "sample_submission.csv", test)
    _write_labels(root / "test_labels.csv", test)
    _write_coordinates(root / "test_label_coordinates.csv", test)
    if options.difficulty == "real":
        _write_csv(root / ANSWER_KEY_NAME, ANSWER_KEY_CSV,
                   (row for r in results for row in answer_key_rows(r.split, r.study_id, r.truth)))
    _write_manifest(root / MANIFEST_NAME, results, options)
    return PhantomSummary(
        out_dir=root, train_studies=len(train), test_studies=len(test),
        series=sum(len(r.series) for r in results), files=sum(r.files for r in results),
        coordinate_rows=sum(len(r.coordinates) for r in results),
        damaged_files=sum(len(r.damaged) for r in results), seconds=time.perf_counter() - started,
    )


def load_manifest(root: str | Path) -> dict:
    """The phantom_manifest.json of a phantom folder: options, series (with their pitfalls), damaged files,
    missing labels; other stages' tests check themselves against it."""
    path = Path(root) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise LumbarFastError(f"{path} not found: {root} is not a phantom folder") from None


def _prepare_out_dir(out_dir: str | Path, n_studies: int, n_test_studies: int) -> Path:
    """Check the arguments and create the output folder; user mistakes become one-line errors."""
    if n_studies < 1:
        raise LumbarFastError(f"--studies must be at least 1 (got {n_studies})")
    if n_test_studies < 0:
        raise LumbarFastError(f"--test-studies must be 0 or more (got {n_test_studies})")
    root = Path(out_dir)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        what = "an empty folder" if root.is_dir() else "a folder"
        raise LumbarFastError(f"{root} exists and is not {what}; choose a new output folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LumbarFastError(f"cannot create {root}: {exc.strerror or exc}") from None
    if not os.access(root, os.W_OK):
        raise LumbarFastError(f"cannot write to {root}: permission denied")
    return root


def _jobs(root: Path, n_studies: int, n_test_studies: int, options: PhantomOptions) -> list[StudyJob]:
    """One job per study, with study and series ids drawn once from the seed, unique over the data set."""
    total = n_studies + n_test_studies
    ids = _unique_ids(np.random.default_rng(options.seed), total * (1 + SERIES_PER_STUDY))
    jobs = []
    for k in range(total):
        split, index = ("train", k) if k < n_studies else ("test", k - n_studies)
        series = ids[total + k * SERIES_PER_STUDY: total + (k + 1) * SERIES_PER_STUDY]
        jobs.append(StudyJob(root, split, index, ids[k], tuple(series), options))
    return jobs


def _unique_ids(rng: np.random.Generator, count: int) -> list[int]:
    """`count` distinct ids of 8-10 digits, like the RSNA study and series ids."""
    ids: dict[int, None] = {}
    while len(ids) < count:
        for value in rng.integers(10_000_000, 4_294_967_295, size=count):
            ids.setdefault(int(value))
    return list(ids)[:count]


def _run(jobs: list[StudyJob], workers: int | None) -> Iterator[StudyResult]:
    """Build the studies in order, in a process pool when more than one worker is asked for."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(jobs) == 1:
        yield from map(build_study, jobs)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=pool_context()) as pool:
        yield from pool.map(build_study, jobs)


def _write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_labels(path: Path, results: list[StudyResult]) -> None:
    """train.csv layout: study_id and the 25 label columns."""
    rows = ([r.study_id, *(r.labels[c] for c in rsna.LABEL_COLUMNS)] for r in results)
    _write_csv(path, ("study_id", *rsna.LABEL_COLUMNS), rows)


def _write_coordinates(path: Path, results: list[StudyResult]) -> None:
    """train_label_coordinates.csv layout: one row per labelled (study, condition, level)."""
    rows = ([*row[:5], f"{row[5]:.4f}", f"{row[6]:.4f}"] for r in results for row in r.coordinates)
    _write_csv(path, rsna.COORDINATE_COLUMNS, rows)


def _write_series(path: Path, results: list[StudyResult]) -> None:
    rows = ([r.study_id, series_id, description] for r in results for series_id, description in r.series)
    _write_csv(path, SERIES_COLUMNS, rows)


def _write_submission(path: Path, results: list[StudyResult]) -> None:
    """sample_submission.csv: 25 rows per test study with uniform probabilities."""
    rows = ([rsna.row_id(r.study_id, c, lv), "0.333333", "0.333333", "0.333333"]
            for r in results for c in rsna.CONDITIONS for lv in rsna.LEVELS)
    _write_csv(path, ("row_id", *rsna.SUBMISSION_COLUMNS), rows)


def _write_manifest(path: Path, results: list[StudyResult], options: PhantomOptions) -> None:
    """phantom_manifest.json: options, every series' storage and pitfalls, damaged files, missing labels."""
    series = [entry for r in results for entry in r.manifest]
    pitfalls: dict[str, list[dict]] = {}
    for entry in series:
        for name in entry["pitfalls"]:
            where = {"study_id": entry["study_id"], "series_id": entry["series_id"]}
            pitfalls.setdefault(name, []).append(where)
    manifest = {
        "generator": f"lumbar-fast {__version__}",
        "options": asdict(options),
        "studies": {split: [r.study_id for r in results if r.split == split] for split in ("train", "test")},
        "series": series,
        "pitfalls": pitfalls,
        "damaged_files": [d for r in results for d in r.damaged],
        "missing_labels": [m for r in results for m in r.missing],
    }
    if options.difficulty == "real":
        manifest["grading"] = {**model_description(options.frequencies), "answer_key": ANSWER_KEY_NAME}
    path.write_text(json.dumps(manifest, indent=1) + "\n")
