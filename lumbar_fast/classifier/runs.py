"""Classifier run folders: start one (`train`, `lumbar-fast train`) and continue one from its last.pt to the
same result as an uninterrupted run (`resume`); read trained ones as evaluate and predict use them, checked
(config, best.pt, the level view, the training prior, the settings of the training cache), each
(sequence, fold) once, with the split each trained on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_fast import recipes, rsna
from lumbar_fast.cache import ImageSettings, open_training_cache
from lumbar_fast.calibration import read_temperature
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.task import prepare_classifier
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.runfolder import BEST, CONFIG, SPLIT, RunFolder
from lumbar_fast.split import read_split_file
from lumbar_fast.training import loop


def train(config: TrainConfig) -> Path:
    """Start a new run for `config` (its `auto` values resolved by the recipe and the cache's slices per
    crop); returns its folder."""
    config.check()
    slices = open_training_cache(config.cache).slices_per_crop()
    return loop.start(config.resolved(slices), prepare_classifier)


def resume(run_dir: str | Path, **session: Any) -> Path:
    """Continue a run from its last.pt (model, optimiser, scaler, schedule, early stopping, RNG) to the same
    result as an uninterrupted run; a finished run only repeats its closing calibration. `session`: device,
    progress (loop.resume)."""
    return loop.resume(run_dir, TrainConfig.from_record, prepare_classifier, **session)


@dataclass(frozen=True)
class ClassifierRun:
    """A trained classifier's run folder, with what evaluate and predict need to know before loading it."""

    path: Path
    sequence: str
    fold: int
    cache: Path  # the cache it trained on
    prior: np.ndarray  # the training prior (metrics.class_prior), the baseline's prediction
    hflip: bool  # trained on horizontally mirrored crops: --tta averages over the mirror
    settings: ImageSettings  # of the cache it trained on: a cache to predict must have the same
    temperature: float  # its probabilities' calibration (calibration.json; 1: none)


def read_run(path: Path) -> ClassifierRun:
    """A classifier run folder checked for use: config, best.pt, the level view; one-line errors otherwise."""
    if not path.is_dir():
        raise LumbarFastError(f"run folder {path} " + ("is a file" if path.exists() else "does not exist"))
    if not (path / CONFIG).is_file():
        raise LumbarFastError(f"{path} is not a run folder (no {CONFIG})")
    folder = RunFolder(path)
    config = folder.read_config()
    if not {"sequence", "fold", "view", "cache"} <= config.keys():
        raise LumbarFastError(f"{path} is not a classifier run of `lumbar-fast train` (nor a locator run of "
                              "this version's `train-locator`)")
    if not folder.file(BEST).is_file():
        raise LumbarFastError(f"run {path} has no {BEST}: it has not finished an epoch")
    if config["view"] != "level":
        raise LumbarFastError(f"run {path} was trained on the {config['view']} view; evaluate and predict "
                              "use level crops (train with --view level)")
    records = folder.read_metrics()
    if not records or "val_prior" not in records[-1]:
        raise LumbarFastError(f"run {path} has no training prior in its metrics")
    calibration = config.get("calibration", "none")  # runs from before calibration: uncalibrated
    return ClassifierRun(path, config["sequence"], int(config["fold"]), Path(config["cache"]),
                         np.asarray(records[-1]["val_prior"], dtype=np.float64),
                         recipes.flips_horizontally(config["augment"]),
                         ImageSettings.from_record(folder.read_cache_settings()),
                         read_temperature(path, calibration))


def read_runs(paths: Sequence[Path]) -> list[ClassifierRun]:
    """The given runs, each (sequence, fold) at most once (twice would count its studies twice)."""
    if not paths:
        raise LumbarFastError("give at least one run folder")
    runs = [read_run(Path(path)) for path in paths]
    seen: dict[tuple[str, int], Path] = {}
    for run in runs:
        key = (run.sequence, run.fold)
        if key in seen:
            raise LumbarFastError(f"runs {seen[key]} and {run.path} are both {run.sequence} fold {run.fold}; "
                                  "give one run per sequence and fold (a second would count its studies "
                                  "twice)")
        seen[key] = run.path
    return runs


def runs_by_sequence(runs: Sequence[ClassifierRun]) -> dict[str, list[ClassifierRun]]:
    """The runs grouped by sequence, in rsna.SEQUENCES order."""
    return {seq: [r for r in runs if r.sequence == seq] for seq in rsna.SEQUENCES
            if any(r.sequence == seq for r in runs)}


def read_run_split(run: ClassifierRun) -> pd.DataFrame:
    """The study-level split (study_id, fold) the run trained and validated on (its split.csv)."""
    path = run.path / SPLIT
    if not path.is_file():
        raise LumbarFastError(f"run {run.path} has no {SPLIT}")
    return read_split_file(path).sort_values("study_id").reset_index(drop=True)
