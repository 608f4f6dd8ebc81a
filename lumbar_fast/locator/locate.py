"""`locate`: every level's point in every study of a cache, from trained locator runs, written as a
train_label_coordinates.csv file (which `ingest --coordinates` reads)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from lumbar_fast import rsna
from lumbar_fast.cache import CacheReader
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.loaders.series import model_input
from lumbar_fast.locator.decode import (
    decode_series,
    prediction_table,
    to_coordinates_csv,
)
from lumbar_fast.locator.runs import (
    check_cache,
    checkpoint_model,
    load_locator_checkpoint,
)
from lumbar_fast.locator.targets import series_of
from lumbar_fast.runfolder import atomic_write


def locate(runs: list[Path], cache: CacheReader, device: str = "auto",
           progress: bool = False) -> pd.DataFrame:
    """Coordinates (train_label_coordinates.csv format) for every study of `cache`, from locator runs;
    `device` auto, cuda or cpu; a progress bar per run on request."""
    return coordinates_of(located_series(runs, cache, device, progress))


def located_series(runs: list[Path], cache: CacheReader, device: str = "auto", progress: bool = False,
                   skip_absent: bool = False) -> list[pd.DataFrame]:
    """Each run's prediction table (decode.prediction_table, with its confidence) for every series of its
    sequence in `cache`: what `coordinates_of` chooses from, so runs on caches of other image sizes can join
    one choice. A run whose sequence the cache lacks is an error, or locates nothing with `skip_absent`."""
    refuse_repeats(runs)
    target = resolve_device(device)
    tables = []
    for run in runs:
        state = load_locator_checkpoint(run)
        sequence = state["sequence"]
        if sequence not in cache.sequences():
            if skip_absent:
                continue
            raise LumbarFastError(f"cache {cache.path} has no {sequence} stacks for locator run {run}")
        check_cache(state, cache, run)
        model = checkpoint_model(state).to(target)
        stack_index, images = cache.stack_index(sequence), cache.stack_images(sequence)
        targets = [tuple(t) for t in state["targets"]]
        for series in tqdm(series_of(stack_index), desc=f"locate {sequence}", unit="series",
                           disable=not progress):
            inputs = model_input(images, series, state["image_size"], target)
            heatmaps, slice_logits = model.predict(inputs, series.layout(target))
            prediction = decode_series(heatmaps, slice_logits)
            tables.append(prediction_table(series, prediction, stack_index, targets))
    return tables


def refuse_repeats(runs: list[Path]) -> None:
    """One line for a run given twice (a shell glob repeated): it would only locate every series again."""
    seen = set()
    for run in runs:
        if Path(run).resolve() in seen:
            raise LumbarFastError(f"locator run {run} is given twice; give each once")
        seen.add(Path(run).resolve())


def coordinates_of(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Coordinates from `located_series` tables: per (study, condition, level) the surest series' point."""
    if not tables:
        return pd.DataFrame(columns=list(rsna.COORDINATE_COLUMNS))
    return to_coordinates_csv(pd.concat(tables, ignore_index=True))


def write_coordinates(coordinates: pd.DataFrame, path: Path) -> None:
    """Write located points as a train_label_coordinates.csv file, atomically (never a half-written file)."""
    columns = list(rsna.COORDINATE_COLUMNS)
    atomic_write(Path(path), lambda tmp: coordinates.to_csv(tmp, index=False, columns=columns))
