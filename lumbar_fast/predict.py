"""Submission files: trained classifier runs predict every study of a cache, 25 rows per study.

Each run classifies the cache's level crops of its sequence (crops placed at the labelled coordinates, or at
the coordinates given to `ingest --coordinates`); runs of one sequence (folds) are averaged, as are several
crops of one (study, condition, level) (two series of one type). Rows without a crop are an error, or filled
with the runs' training prior when asked. `evaluate` predicts the same way, so its numbers are what `score`
gives for predict's output on the same studies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from lumbar_fast import metrics, rsna
from lumbar_fast.cache import CacheReader, IngestSettings, check_fits, open_cache
from lumbar_fast.calibration import temper
from lumbar_fast.classifier.runs import ClassifierRun, read_runs, runs_by_sequence
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.inference import load_run, predict_items
from lumbar_fast.loaders import LoaderConfig, build_loader
from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.models.tta import FlipAverage
from lumbar_fast.runfolder import atomic_write

PROBABILITY_COLUMNS = rsna.PROBABILITY_COLUMNS
LOCATION = ["study_id", "condition", "level"]


@dataclass(frozen=True)
class InferenceOptions:
    """How runs predict: device, mixed precision, batch size, test-time augmentation, progress bar."""

    device: str = "auto"
    amp: str = "auto"
    batch_size: int = 64
    tta: bool = False  # average with the horizontal mirror, for runs trained with horizontal flips
    progress: bool = False  # a bar over the runs


def check_crops(run: ClassifierRun, cache: CacheReader) -> None:
    """Refuse, in one line, a cache without crops of the run's sequence or whose images differ from those the
    run trained on (size, slices per crop, crop width, side convention)."""
    if run.sequence not in cache.sequences():
        raise LumbarFastError(f"cache {cache.path} has no {run.sequence} crops (needed by run {run.path})")
    check_fits(run.settings, cache, run.path, run.sequence)


def check_runs(runs: Sequence[ClassifierRun], cache: CacheReader) -> None:
    """`check_crops` for every run: before any inference, so a long run does not fail at its end."""
    for run in runs:
        check_crops(run, cache)


def predict_crops(run: ClassifierRun, cache: CacheReader, rows: np.ndarray,
                  options: InferenceOptions) -> np.ndarray:
    """(len(rows), 3) class probabilities of the given rows of the cache's level crops by one run, scaled by
    its temperature (lumbar_fast.calibration).

    Batched on the GPU (AMP, channels_last) when there is one, else on the CPU. The torch loader holds the
    rows on the device and normalises them there; each crop is read once, so DALI's workers would only add
    start-up time.
    """
    loaded = load_run(run.path, device=options.device, amp=options.amp)
    images_path = cache.array_path(run.sequence, "levels")
    if len(rows) == 0:
        return np.zeros((0, len(rsna.SEVERITIES)))
    cfg = LoaderConfig(batch_size=options.batch_size, device=str(loaded.device), augment=None,
                       dtype=torch.float32 if loaded.amp_dtype is None else None,
                       mean=tuple(loaded.meta["mean"]), std=tuple(loaded.meta["std"]))
    loader = build_loader("torch", images_path, rows, np.zeros(len(rows), np.int64), cfg, train=False)
    model = FlipAverage(loaded.model) if options.tta and run.hflip else loaded.model
    try:
        order, probs = predict_items(model, loader, loaded.amp_dtype)
    finally:
        loader.close()
    result = np.empty_like(probs)
    result[order] = temper(probs, run.temperature)
    return result


def crop_predictions(runs: Sequence[ClassifierRun], cache: CacheReader,
                     studies: dict[Path, np.ndarray] | None, options: InferenceOptions) -> pd.DataFrame:
    """One row per level crop predicted: its label row (study_id, series_id, condition, level, severity), the
    predicting run's fold, the probabilities (p_*) and the run's training prior (prior_*).

    `studies[run.path]`: the studies that run predicts (its validation fold, for evaluate); None: all. Every
    run is checked against the cache before any predicts.
    """
    check_runs(runs, cache)
    tables = []
    for run in tqdm(runs, desc="classify", unit="run", disable=not options.progress):
        labels = cache.level_labels(run.sequence).reset_index(drop=True)
        keep = np.ones(len(labels), bool) if studies is None else labels["study_id"].isin(studies[run.path])
        rows = np.flatnonzero(np.asarray(keep))
        probs = predict_crops(run, cache, rows, options)
        table = labels.loc[rows, ["study_id", "series_id", "condition", "level", "severity"]]
        table = table.assign(sequence=run.sequence, fold=run.fold, crop_row=rows)
        table[list(PROBABILITY_COLUMNS)] = probs
        table[[f"prior_{name}" for name in rsna.SUBMISSION_COLUMNS]] = np.tile(run.prior, (len(rows), 1))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def location_probabilities(crops: pd.DataFrame) -> pd.DataFrame:
    """Probabilities per (study, condition, level): the mean over its crops and the runs that predicted it."""
    return crops.groupby(LOCATION, as_index=False)[list(PROBABILITY_COLUMNS)].mean()


@dataclass
class FilledRows:
    """Submission rows: probabilities for every row, and which rows took the training prior (no crop)."""

    rows: pd.DataFrame  # row_id, study_id, condition, level, severity, p_* (labels_to_rows order)
    filled: np.ndarray = field(repr=False)  # bool per row

    @property
    def probabilities(self) -> np.ndarray:
        """(N, 3) probabilities in rsna.SUBMISSION_COLUMNS order."""
        return self.rows[list(PROBABILITY_COLUMNS)].to_numpy(dtype=np.float64)

    def submission(self) -> pd.DataFrame:
        """The sample_submission-format frame of these rows."""
        return metrics.submission_frame(self.rows["row_id"], self.probabilities)


def sequence_priors(runs: Sequence[ClassifierRun]) -> dict[str, np.ndarray]:
    """Each sequence's training prior: the mean of its runs' priors (metrics.class_prior)."""
    return {seq: np.mean([r.prior for r in group], axis=0) for seq, group in runs_by_sequence(runs).items()}


def fill_rows(solution: pd.DataFrame, located: pd.DataFrame, priors: dict[str, np.ndarray]) -> FilledRows:
    """Join the located probabilities onto submission rows (labels_to_rows output); rows without a crop get
    their sequence's best constant prediction (`metrics.metric_optimal` of its training prior: a lower
    expected loss than the prior itself under the metric's 1/2/4 weights)."""
    rows = solution.merge(located, on=LOCATION, how="left", validate="one_to_one")
    filled = rows[PROBABILITY_COLUMNS[0]].isna().to_numpy()
    if filled.any():
        sequences = rows.loc[filled, "condition"].map(rsna.SEQUENCE_OF_CONDITION)
        constants = {seq: metrics.metric_optimal(prior) for seq, prior in priors.items()}
        rows.loc[filled, list(PROBABILITY_COLUMNS)] = np.stack([constants[seq] for seq in sequences])
    return FilledRows(rows, filled)


def refuse_rows_without_crops(solution: pd.DataFrame, cache: CacheReader) -> None:
    """A one-line error naming the first study with a submission row that the cache has no crop for (checked
    before any inference, so a long run does not fail at its end)."""
    crops = pd.concat([cache.level_labels(seq)[LOCATION] for seq in cache.sequences()]).drop_duplicates()
    no_crop = solution[LOCATION].merge(crops, how="left", indicator=True)["_merge"].eq("left_only").to_numpy()
    if no_crop.any():
        first, studies = solution.loc[no_crop].iloc[0], solution.loc[no_crop, "study_id"].nunique()
        raise LumbarFastError(
            f"{studies} studies lack crops for {no_crop.sum()} rows (first: study {first.study_id}, "
            f"{first.condition} {first.level}; crops are cut at the cache's coordinates or at --locators' "
            "points); pass --allow-prior to fill those rows with the best constant prediction (from the "
            "training prior)")


@dataclass
class PredictSummary:
    """What predict did, for its printed summary."""

    out: Path
    studies: int
    rows: int
    filled_rows: int
    filled_studies: int
    crops: int
    runs: dict[str, int]
    device: str
    flip_tta_runs: int | None  # --tta: the runs averaged over the mirror (those trained with flips)
    seconds: float
    located_cache: Path | None = None  # the derived cache of --locators

    def lines(self) -> str:
        """The summary printed after writing the file."""
        runs = ", ".join(f"{seq} ×{n}" for seq, n in self.runs.items())
        tta = ("" if self.flip_tta_runs is None
               else f", flip TTA for {self.flip_tta_runs} run(s) trained with flips")
        text = (f"wrote {self.out}: {self.studies} studies, {self.rows} rows from {self.crops} crops "
                f"(runs: {runs}; {self.device}{tta}; {self.seconds:.1f} s)")
        if self.located_cache is not None:
            text += f"\ncrops cut at the located points, in the derived cache {self.located_cache}"
        if self.filled_rows:
            text += (f"\n{self.filled_rows} rows of {self.filled_studies} studies had no crop and hold the "
                     "best constant prediction from the training prior (--allow-prior)")
        return text


def ingest_at_points(coordinates: pd.DataFrame, settings: IngestSettings, folder: Path,
                     workers: int | None = None, progress: bool = False) -> Path:
    """Ingest the DICOM folder of `settings` again with `coordinates` as its points: the crops cache in
    `folder`, named by a digest of its settings and of the points, so a rerun with the same ones reuses (or
    resumes) it and other ones never meet a stale one."""
    from lumbar_fast.ingest import ingest_with, settings_digest
    from lumbar_fast.locator.locate import write_coordinates

    text = coordinates.to_csv(index=False, columns=list(rsna.COORDINATE_COLUMNS))
    points = folder / f"coordinates-{hashlib.sha1(text.encode()).hexdigest()[:12]}.csv"
    write_coordinates(coordinates, points)
    at_points = dataclasses.replace(settings, coordinates=str(points))
    derived = folder / f"cache-{settings_digest(at_points)}.{settings.fmt}"
    ingest_with(at_points, derived, workers, progress)
    return derived


def located_cache(locator_runs: Sequence[Path], cache: CacheReader, out: Path, device: str,
                  allow_prior: bool = False) -> Path:
    """Locate the levels of every study of `cache` with locator runs, then ingest the cache's DICOM folder
    again with those points as coordinates and every other setting of the cache (`ingest_at_points`, in
    `<out>.located/`): the derived cache's path. With `allow_prior`, a run of a sequence the cache lacks
    locates nothing (its rows take the prior)."""
    from lumbar_fast.locator.locate import coordinates_of, located_series

    coordinates = coordinates_of(located_series(list(locator_runs), cache, device, skip_absent=allow_prior))
    return ingest_at_points(coordinates, cache.settings(), out.with_name(f"{out.name}.located"))


def runs_with_crops(runs: Sequence[ClassifierRun], cache: CacheReader) -> list[ClassifierRun]:
    """The runs of the sequences the cache has level crops of (--allow-prior: the rows of the others take the
    training prior); an error when there are none, as a submission of priors alone is no prediction."""
    present = [run for run in runs
               if run.sequence in cache.sequences() and len(cache.level_labels(run.sequence))]
    if not present:
        raise LumbarFastError(f"cache {cache.path} has no level crops of any run's sequence: nothing to "
                              "classify (crops are cut at the cache's coordinates or at --locators' points)")
    return present


def check_out(out: Path) -> None:
    """Refuse an --out that holds something other than a submission (a labels CSV named by mistake), before
    any work: predict replaces only a file of its own kind."""
    if out.is_dir():
        raise LumbarFastError(f"--out {out} is a folder; give the submission file's path")
    if out.exists() and out.stat().st_size:
        with open(out, encoding="utf-8-sig", errors="replace") as file:
            header = file.readline().strip()
        fields = [field.strip().strip('"').strip() for field in header.split(",")]
        if fields[:1] == [""]:  # pandas' index column
            fields = fields[1:]
        if fields != ["row_id", *rsna.SUBMISSION_COLUMNS]:
            raise LumbarFastError(f"--out {out} exists and is not a submission (its first line: "
                                  f"{header[:60]!r}); choose another path or remove it")


def check_sequences(runs: Sequence[ClassifierRun]) -> None:
    """Refuse runs that do not cover every sequence: a submission needs all three."""
    missing = sorted(set(rsna.SEQUENCES) - {r.sequence for r in runs})
    if missing:
        raise LumbarFastError(f"no run for sequence(s) {', '.join(missing)}: a submission needs all three")


def predict(run_paths: Sequence[Path], cache_path: Path, out: Path, allow_prior: bool = False,
            options: InferenceOptions | None = None, locator_runs: Sequence[Path] = ()) -> PredictSummary:
    """Write a sample_submission-format CSV for every study of the cache; returns what it did.

    With `locator_runs`, the crops are cut at the points they locate (a derived cache, `located_cache`)
    instead of the cache's own coordinates: locate → ingest --coordinates → predict.
    """
    options = options or InferenceOptions()
    started = time.perf_counter()
    check_out(out)
    runs = read_runs(run_paths)
    check_sequences(runs)
    cache = open_cache(cache_path)
    for run in runs:  # the located cache takes this cache's settings: refused before locating, not after
        check_fits(run.settings, cache, run.path, run.sequence)
    derived = located_cache(locator_runs, cache, out, options.device, allow_prior) if locator_runs else None
    if derived is not None:
        cache = open_cache(derived)
    classifying = runs_with_crops(runs, cache) if allow_prior else runs
    check_runs(classifying, cache)
    solution = metrics.labels_to_rows(cache.study_labels())
    if not allow_prior:
        refuse_rows_without_crops(solution, cache)
    crops = crop_predictions(classifying, cache, None, options)
    result = fill_rows(solution, location_probabilities(crops), sequence_priors(runs))
    submission = result.submission()
    metrics.check_submission(submission)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: submission.to_csv(tmp, index=False))
    return PredictSummary(
        out=out, studies=int(solution["study_id"].nunique()), rows=len(submission),
        filled_rows=int(result.filled.sum()),
        filled_studies=int(result.rows.loc[result.filled, "study_id"].nunique()), crops=len(crops),
        runs={seq: len(group) for seq, group in runs_by_sequence(classifying).items()},
        device=str(resolve_device(options.device)),
        flip_tta_runs=sum(run.hflip for run in classifying) if options.tta else None,
        seconds=time.perf_counter() - started,
        located_cache=derived)
