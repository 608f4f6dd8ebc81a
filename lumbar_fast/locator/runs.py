"""Locator run folders: start and resume a run (`train_locator`, `resume_locator`), tell a locator run from
a classifier run, read its best checkpoint back as a model, and evaluate it on its validation studies (for
`evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from lumbar_fast.cache import CacheReader, ImageSettings, check_fits, open_cache
from lumbar_fast.errors import LumbarFastError, first_line
from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.loaders.series import SeriesLoader, SeriesLoaderConfig
from lumbar_fast.locator.config import KIND, LocatorConfig, refuse_several_processes
from lumbar_fast.locator.metrics import mean_position_predictions, point_errors
from lumbar_fast.locator.targets import load_data
from lumbar_fast.locator.task import evaluate_series, prepare_locator
from lumbar_fast.models.locator import Locator
from lumbar_fast.runfolder import BEST, SPLIT, RunFolder
from lumbar_fast.split import read_split_file, require_studies, train_val_studies
from lumbar_fast.training import loop


def train_locator(config: LocatorConfig) -> Path:
    """Start a new locator run for `config`; returns its folder."""
    config.check()
    refuse_several_processes()
    return loop.start(config, prepare_locator)


def resume_locator(run_dir: str | Path, **session: Any) -> Path:
    """Continue a locator run from its last.pt to the same result as an uninterrupted run. `session`:
    device, progress (loop.resume)."""
    refuse_several_processes()
    return loop.resume(run_dir, LocatorConfig.from_record, prepare_locator, **session)


def is_locator_run(run_dir: Path) -> bool:
    """Whether a folder holds a `train-locator` run: its config.json says so."""
    try:
        return RunFolder(Path(run_dir)).read_config().get("kind") == KIND
    except LumbarFastError:
        return False  # not a run at all, or a damaged one: whoever opens it next names what is wrong


def locator_runs_apart(run_dirs: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(the other runs, the locator runs) among `run_dirs`, each in its given order: evaluate and predict take
    both kinds in one list, as the shell expands `runs/* locs/*`."""
    kinds = [(Path(path), is_locator_run(Path(path))) for path in run_dirs]
    return [path for path, locator in kinds if not locator], [path for path, locator in kinds if locator]


def load_locator_checkpoint(run_dir: Path) -> dict:
    """The best checkpoint of a locator run; a one-line error for any other folder."""
    state = RunFolder.open_existing(Path(run_dir)).load_checkpoint(BEST)
    if state.get("kind") != KIND:
        raise LumbarFastError(f"{run_dir} is not a locator run (train it with `lumbar-fast train-locator`)")
    return state


def check_cache(state: dict, cache: CacheReader, run: Path) -> None:
    """Refuse, in one line, a cache whose stack images differ in size from those the locator run trained on
    (its checkpoint's `cache_settings`); slices per crop, crop widths and side convention shape only the
    level crops, which a locator never reads."""
    check_fits(ImageSettings.from_record(state["cache_settings"]), cache, run, state["sequence"],
               fields=("size",))


def checkpoint_model(state: dict) -> Locator:
    """The Locator stored in a locator checkpoint (its weights loaded, in eval mode)."""
    model = Locator(state["model_name"], len(state["targets"]), width=state["width"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:  # written by another version of the Locator
        raise LumbarFastError(f"the locator checkpoint does not fit this version's model: "
                              f"{str(exc).splitlines()[0]}") from None
    return model.eval()


@dataclass(frozen=True)
class RunEvaluation:
    """A locator run's best checkpoint on its validation studies, beside the mean-position baseline."""

    path: Path
    sequence: str
    fold: int
    split: pd.DataFrame
    metrics: dict[str, Any]
    predictions: pd.DataFrame  # prediction_table rows of the validation series
    points: pd.DataFrame  # point_errors of `predictions`
    baseline_points: pd.DataFrame  # point_errors of the mean-position baseline's predictions


def read_locator_run(run_dir: Path) -> tuple[RunFolder, LocatorConfig, dict[str, Any], pd.DataFrame]:
    """A locator run's folder, config, best checkpoint and split; one-line errors for anything else."""
    run = RunFolder.open_existing(run_dir)
    try:
        config = LocatorConfig.from_record(run.read_config())
        split = read_split_file(run.file(SPLIT))
    except (TypeError, ValueError, OSError, LumbarFastError) as exc:
        raise LumbarFastError(f"{run_dir} is not a readable locator run: {first_line(exc)}") from None
    return run, config, load_locator_checkpoint(run_dir), split


def evaluate_run(run_dir: str | Path, cache_path: str | Path | None = None,
                 device: str = "auto") -> RunEvaluation:
    """A locator run's best checkpoint on its validation studies (its fold of its split), and the
    mean-position baseline trained on its training studies (for `evaluate`)."""
    run, config, state, split = read_locator_run(Path(run_dir))
    target = resolve_device(device)
    cache = open_cache(cache_path or config.cache)
    check_cache(state, cache, run.path)
    train_studies, val_studies = train_val_studies(split, config.fold)
    require_studies(val_studies, cache.study_labels()["study_id"].to_numpy(), cache.path, run.path)
    data = load_data(cache, config.sequence)
    val_series = data.indices_of(val_studies, labelled_only=True)
    train_series = data.indices_of(train_studies, labelled_only=True)
    if not val_series or not train_series:
        raise LumbarFastError(f"cache {cache.path} has no labelled {config.sequence} series of locator run "
                              f"{run_dir}'s {'validation' if not val_series else 'training'} studies")
    loader = SeriesLoader(data, val_series, SeriesLoaderConfig(config.image_size, target), train=False)
    metrics, predictions, points = evaluate_series(checkpoint_model(state).to(target), loader)
    baseline = mean_position_predictions(data, train_series, val_series)
    return RunEvaluation(run.path, config.sequence, config.fold, split, metrics, predictions, points,
                         point_errors(baseline, data.labels, data.stack_index))
