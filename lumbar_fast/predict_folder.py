"""`predict --data`: an RSNA-layout folder of test studies (test_images/, test_series_descriptions.csv) to a
submission in one call, with nothing to keep in step by hand.

The stages: ingest the test split's stacks at each locator's image size → locate every level → ingest the
level crops at the located points with the image settings the classifier runs trained on (size, slices per
crop, crop widths, side convention, all recorded in the runs) → classify, write the CSV (`predict.predict`).
The caches and the located points live in a temporary folder beside the CSV, or in `<out>.work/` with
`keep` (where a rerun finds its caches finished and does not ingest again; each cache is named by a digest
of its settings and CSVs, so a rerun with other runs or edited CSVs makes new ones, each a full cache, while
a rerun after DICOM files changed reuses the old). Locator runs of one sequence at several sizes join one
choice: per level, the surest series' point. It reads only local files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from lumbar_fast import rsna
from lumbar_fast.cache import CacheReader, ImageSettings, IngestSettings, error_lines, open_cache
from lumbar_fast.classifier.runs import ClassifierRun, read_runs
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.ingest import ingest_with, settings_digest
from lumbar_fast.locator.locate import coordinates_of, located_series
from lumbar_fast.locator.runs import load_locator_checkpoint
from lumbar_fast.predict import (
    InferenceOptions,
    PredictSummary,
    check_out,
    check_sequences,
    ingest_at_points,
    predict,
)

T = TypeVar("T")
#: how many of what ingest could not use the closing lines name (the rest: `lumbar-fast info --errors`)
SHOWN_PROBLEMS = 5


@dataclass
class FolderSummary:
    """What `predict --data` did: predict's summary, each stage's seconds, what it could not use."""

    predicted: PredictSummary
    stages: dict[str, float]
    problems: list[str]  # studies without a series type, files and series ingest could not use
    kept_crops: Path | None  # the crops cache, when its work folder is kept

    def lines(self) -> str:
        """The closing lines: predict's, what it could not use, the time of each stage and studies/s."""
        lines = [self.predicted.lines()]
        if self.problems:
            lines.append(f"could not use {len(self.problems)}:")
            lines += [f"  {problem}" for problem in self.problems[:SHOWN_PROBLEMS]]
            if len(self.problems) > SHOWN_PROBLEMS:
                where = (f"`lumbar-fast info {self.kept_crops} --errors`" if self.kept_crops is not None
                         else "--keep, then `lumbar-fast info` on the kept crops cache")
                lines.append(f"  ({len(self.problems) - SHOWN_PROBLEMS} more: {where})")
        total = sum(self.stages.values())
        stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.stages.items())
        lines.append(f"stages: {stages}; {self.predicted.studies} studies in {total:.1f} s "
                     f"({self.predicted.studies / total:.2f} studies/s); torch loader")
        if self.kept_crops is not None:
            lines.append(f"work folder kept: {self.kept_crops.parent}")
        return "\n".join(lines)


def lacking_series(cache: CacheReader) -> list[str]:
    """Each study of a test cache without a series of a type ("study 7: no Axial T2 series"): its rows of
    that sequence have no crop."""
    studies = cache.study_labels()["study_id"]
    return [f"study {study}: no {rsna.SEQUENCES[seq].description} series"
            for seq in rsna.SEQUENCES
            for study in sorted(set(studies) - set(cache.stack_index(seq)["study_id"])
                                if seq in cache.sequences() else set(studies))]


def unusable(cache: CacheReader) -> list[str]:
    """What a test cache could not use: the studies lacking a series type, then its errors table (files and
    series, with the reason)."""
    return lacking_series(cache) + error_lines(cache.errors())


def check_stacks(stacks: CacheReader, data_dir: Path, allow_prior: bool) -> None:
    """One-line errors before locating: a folder none of whose series could be used; without --allow-prior,
    a study without a series of a type (the rows of that type would have no crop)."""
    if not stacks.sequences():
        first = next(iter(error_lines(stacks.errors())), "no series listed")
        raise LumbarFastError(f"no series of {data_dir} could be used (first: {first})")
    lacking = lacking_series(stacks)
    if lacking and not allow_prior:
        raise LumbarFastError(f"the studies of {data_dir} lack {len(lacking)} series (first: {lacking[0]}); "
                              "pass --allow-prior to fill their rows with the best constant "
                              "prediction (from the training prior)")


def runs_image_settings(runs: Sequence[ClassifierRun]) -> ImageSettings:
    """The image settings every classifier run trained with; runs that differ cannot share one cache."""
    first = runs[0]
    for run in runs[1:]:
        if run.settings != first.settings:
            raise LumbarFastError(f"runs {first.path} and {run.path} trained on caches of different images "
                                  f"({first.settings.record()} against {run.settings.record()}); predict "
                                  "them in separate calls")
    return first.settings


def locator_groups(locator_runs: Sequence[Path]) -> tuple[dict[int, list[Path]], set[str]]:
    """The locator runs grouped by the stack image size each trained on (its cache's), and the sequences
    they locate."""
    groups: dict[int, list[Path]] = {}
    sequences = set()
    for run in locator_runs:
        state = load_locator_checkpoint(Path(run))
        groups.setdefault(ImageSettings.from_record(state["cache_settings"]).size, []).append(Path(run))
        sequences.add(state["sequence"])
    return groups, sequences


@contextlib.contextmanager
def work_folder(out: Path, keep: bool) -> Iterator[Path]:
    """`<out>.work/` (kept) or a temporary folder beside `out`, removed at the end whatever happens."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if keep:
        folder = out.with_name(f"{out.name}.work")
        folder.mkdir(exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as folder:
        yield Path(folder)


def check_folder(data_dir: Path) -> None:
    """One-line errors for a folder that is not an RSNA test split, before any work."""
    if not data_dir.is_dir():
        raise LumbarFastError(f"--data {data_dir} is not a folder")
    for name in ("test_images", "test_series_descriptions.csv"):
        if not (data_dir / name).exists():
            raise LumbarFastError(f"--data {data_dir} has no {name}: give the competition folder "
                                  "(test_images/ and test_series_descriptions.csv)")


def predict_folder(run_paths: Sequence[Path], data_dir: Path, out: Path, locator_runs: Sequence[Path],
                   allow_prior: bool = False, options: InferenceOptions | None = None, keep: bool = False,
                   workers: int | None = None, progress: bool = True) -> FolderSummary:
    """Write the submission of every test study of `data_dir` from classifier runs and locator runs."""
    options = dataclasses.replace(options or InferenceOptions(), progress=progress)
    data_dir, out = Path(data_dir), Path(out)
    check_folder(data_dir)
    check_out(out)
    runs = read_runs(run_paths)
    check_sequences(runs)
    images = runs_image_settings(runs)
    if not locator_runs:
        raise LumbarFastError("--data needs --locators: test studies come without coordinates")
    groups, located_sequences = locator_groups(locator_runs)
    unlocated = [seq for seq in rsna.SEQUENCES if seq not in located_sequences]
    if unlocated and not allow_prior:
        raise LumbarFastError(f"no locator run for {', '.join(unlocated)}: its rows would have no crop; give "
                              "one per sequence, or --allow-prior to fill them from the training prior")
    stages: dict[str, float] = {}

    def timed(name: str, step: Callable[..., T], *args: object, **kwargs: object) -> T:
        started = time.perf_counter()
        result = step(*args, **kwargs)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - started
        return result

    with work_folder(out, keep) as work:
        test_split = IngestSettings(data_dir=str(data_dir), split="test", images=images)
        located = []
        for size, group in groups.items():
            stacks = dataclasses.replace(test_split, images=dataclasses.replace(images, size=size))
            path = work / f"stacks-{size}-{settings_digest(stacks)}.zarr"
            timed("ingest stacks", ingest_with, stacks, path, workers, progress)
            cache = open_cache(path)
            check_stacks(cache, data_dir, allow_prior)
            located += timed("locate", located_series, group, cache, options.device, progress,
                             skip_absent=True)
        points = coordinates_of(located)  # one choice per level over every size's runs
        if points.empty:
            raise LumbarFastError(f"the locator runs located no level in {data_dir}: none of its studies has "
                                  "a series of their sequences")
        crops = timed("ingest crops", ingest_at_points, points, test_split, work, workers, progress)
        predicted = predict(run_paths, crops, out, allow_prior, options)
        stages["classify"] = predicted.seconds
        return FolderSummary(predicted, stages, unusable(open_cache(crops)), crops if keep else None)

