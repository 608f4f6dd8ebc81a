"""`predict --data`: an RSNA-layout folder of test studies (test_images/, test_series_descriptions.csv) to a
submission in one call, with nothing to keep in step by hand.

The stages: ingest the test split's stacks at each locator's image size → locate every level → ingest the
level crops at the located points with the image settings the classifier runs trained on (size, slices per
crop, crop widths, side convention, all recorded in the runs) → classify, write the CSV (`predict.predict`).
The caches and the located points live in a temporary folder beside the CSV, or in `<out>.work/` with
`keep` (where a rerun finds them finished and skips their stages). It reads only local files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lumbar_fast import rsna
from lumbar_fast.cache import CacheReader, ImageSettings, IngestSettings, error_lines, open_cache
from lumbar_fast.classifier.runs import ClassifierRun, read_runs
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.ingest import ingest_with
from lumbar_fast.locator.locate import locate, write_coordinates
from lumbar_fast.locator.runs import load_locator_checkpoint
from lumbar_fast.predict import InferenceOptions, PredictSummary, predict

CROPS = "crops.zarr"
#: how many of what ingest could not use the closing lines name (the rest: `lumbar-fast info --errors`)
SHOWN_PROBLEMS = 5


@dataclass
class FolderSummary:
    """What `predict --data` did: predict's summary, each stage's seconds, what it could not use."""

    predicted: PredictSummary
    stages: dict[str, float]
    problems: list[str]  # studies without a series type, files and series ingest could not use
    work: Path | None  # the kept work folder

    def lines(self) -> str:
        """The closing lines: predict's, what it could not use, the time of each stage and studies/s."""
        lines = [self.predicted.lines()]
        if self.problems:
            lines.append(f"could not use {len(self.problems)}:")
            lines += [f"  {problem}" for problem in self.problems[:SHOWN_PROBLEMS]]
            if len(self.problems) > SHOWN_PROBLEMS:
                where = (f"`lumbar-fast info {self.work / CROPS} --errors`" if self.work is not None
                         else "--keep, then `lumbar-fast info` on the kept crops cache")
                lines.append(f"  ({len(self.problems) - SHOWN_PROBLEMS} more: {where})")
        total = sum(self.stages.values())
        stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.stages.items())
        lines.append(f"stages: {stages}; {self.predicted.studies} studies in {total:.1f} s "
                     f"({self.predicted.studies / total:.2f} studies/s); torch loader")
        if self.work is not None:
            lines.append(f"work folder kept: {self.work}")
        return "\n".join(lines)


def unusable(cache: CacheReader) -> list[str]:
    """What a test cache could not use: each study without a series of a type (whose rows then lack crops),
    then its errors table (files and series, with the reason)."""
    studies = cache.study_labels()["study_id"]
    lacking = [f"study {study}: no {rsna.SEQUENCES[seq].description} series"
               for seq in rsna.SEQUENCES
               for study in sorted(set(studies) - set(cache.stack_index(seq)["study_id"])
                                   if seq in cache.sequences() else set(studies))]
    return lacking + error_lines(cache.errors())


def runs_image_settings(runs: Sequence[ClassifierRun]) -> ImageSettings:
    """The image settings every classifier run trained with; runs that differ cannot share one cache."""
    first = runs[0]
    for run in runs[1:]:
        if run.settings != first.settings:
            raise LumbarFastError(f"runs {first.path} and {run.path} trained on caches of different images "
                                  f"({first.settings.record()} against {run.settings.record()}); predict "
                                  "them in separate calls")
    return first.settings


def locator_sizes(locator_runs: Sequence[Path]) -> dict[int, list[Path]]:
    """The locator runs grouped by the stack image size each trained on (its cache's)."""
    groups: dict[int, list[Path]] = {}
    for run in locator_runs:
        size = ImageSettings.from_record(load_locator_checkpoint(Path(run))["cache_settings"]).size
        groups.setdefault(size, []).append(Path(run))
    return groups


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
    images = runs_image_settings(read_runs(run_paths))
    if not locator_runs:
        raise LumbarFastError("--data needs --locators: test studies come without coordinates")
    groups = locator_sizes(locator_runs)
    stages: dict[str, float] = {}

    def ingest_stage(name: str, settings: IngestSettings, path: Path) -> Path:
        started = time.perf_counter()
        ingest_with(settings, path, workers, progress)
        stages[name] = stages.get(name, 0.0) + time.perf_counter() - started
        return path

    with work_folder(out, keep) as work:
        test_split = IngestSettings(data_dir=str(data_dir), split="test", images=images)
        located = []
        for size, runs in groups.items():
            stacks = ingest_stage("ingest stacks", dataclasses.replace(
                test_split, images=dataclasses.replace(images, size=size)), work / f"stacks-{size}.zarr")
            started = time.perf_counter()
            located.append(locate(runs, open_cache(stacks), options.device, progress))
            stages["locate"] = stages.get("locate", 0.0) + time.perf_counter() - started
        points = work / "located_coordinates.csv"
        write_coordinates(pd.concat(located, ignore_index=True), points)
        crops = ingest_stage("ingest crops", dataclasses.replace(test_split, coordinates=str(points)),
                             work / CROPS)
        predicted = predict(run_paths, crops, out, allow_prior, options)
        stages["classify"] = predicted.seconds
        return FolderSummary(predicted, stages, unusable(open_cache(crops)), work if keep else None)

