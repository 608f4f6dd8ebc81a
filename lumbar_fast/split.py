"""The study-level K-fold split shared by the three sequences: a study's three models validate on one fold.

A split is a table (study_id, fold), one row per study, so no study sits on both sides. It is stratified on
the studies' labels: studies are grouped by their worst grade per condition group (spinal, foraminal,
subarticular; -1 when unlabelled), shuffled inside each stratum from the seed, and dealt to the folds in turn
across all strata, so every stratum, however small, spreads over the folds with counts differing by at most
one. It is written once beside the cache (`<cache>.split-k{K}-s{seed}.csv`) and reused, or given as a file;
beside a read-only cache it is made each time, not written (a run keeps its own copy).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar_fast import rsna
from lumbar_fast.csvfile import INT, read_csv
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.runfolder import atomic_write

SPLIT_COLUMNS = ("study_id", "fold")


def stratum_keys(study_labels_df: pd.DataFrame) -> pd.Series:
    """Each study's stratum: its worst grade per metric group, e.g. 'spinal=2 foraminal=1 subarticular=-1'."""
    missing = [c for c in ("study_id", *rsna.LABEL_COLUMNS) if c not in study_labels_df.columns]
    if missing:
        raise LumbarFastError(f"study labels lack column(s) {', '.join(missing[:3])}")
    keys = pd.Series("", index=study_labels_df.index)
    for group in dict.fromkeys(rsna.CONDITION_GROUP.values()):
        columns = [f"{c}_{lv}" for c, g in rsna.CONDITION_GROUP.items() if g == group for lv in rsna.LEVELS]
        worst = study_labels_df[columns].max(axis=1).astype(int).astype(str)
        keys = keys + f"{group}=" + worst + " "
    return keys.str.strip()


def make_split(study_labels_df: pd.DataFrame, folds: int = 5, seed: int = 42) -> pd.DataFrame:
    """Study-level stratified K-fold split: DataFrame(study_id, fold), one row per study, sorted by study_id.

    `study_labels_df`: study_id + rsna.LABEL_COLUMNS as class ids (-1 missing), as cache.study_labels() gives.
    Deterministic for a (set of studies, labels, folds, seed), whatever the input row order.
    """
    if folds < 2:
        raise LumbarFastError(f"--folds must be at least 2, got {folds}")
    labels = study_labels_df.sort_values("study_id", kind="stable").reset_index(drop=True)
    if labels["study_id"].duplicated().any():
        raise LumbarFastError("study labels list a study twice")
    if len(labels) < folds:
        raise LumbarFastError(f"{len(labels)} studies cannot fill {folds} folds")
    rng = np.random.default_rng(seed)
    order = pd.DataFrame({"key": stratum_keys(labels), "shuffle": rng.permutation(len(labels))})
    dealt = order.sort_values(["key", "shuffle"]).index.to_numpy()
    fold = np.empty(len(labels), dtype=np.int64)
    fold[dealt] = np.arange(len(labels)) % folds
    return pd.DataFrame({"study_id": labels["study_id"].astype(np.int64).to_numpy(), "fold": fold})


def split_path_for(cache_path: str | os.PathLike, folds: int, seed: int) -> Path:
    """Where the split of a (cache, folds, seed) lives: `<cache>.split-k{K}-s{seed}.csv` beside the cache."""
    cache_path = Path(cache_path)
    return cache_path.with_name(f"{cache_path.name}.split-k{folds}-s{seed}.csv")


def read_split_file(path: str | os.PathLike) -> pd.DataFrame:
    """A split file's (study_id, fold) rows, read with csvfile's one-line errors (a run's split.csv too)."""
    return read_csv(path, dict.fromkeys(SPLIT_COLUMNS, INT), "split", exact=True)


def read_split(path: str | os.PathLike, study_ids: np.ndarray, folds: int) -> pd.DataFrame:
    """A split file checked against the cache's studies and K: every study once, folds 0..K-1, none empty."""
    split = read_split_file(path)
    problems = {
        "lists a study twice": split.loc[split["study_id"].duplicated(), "study_id"],
        "has studies that are not in the cache": split.loc[~split["study_id"].isin(study_ids), "study_id"],
        "lacks studies of the cache": pd.Series(np.setdiff1d(study_ids, split["study_id"])),
        f"has folds outside 0..{folds - 1}": split.loc[~split["fold"].between(0, folds - 1), "fold"],
        "has empty folds": pd.Series(np.setdiff1d(np.arange(folds), split["fold"])),
    }
    for problem, examples in problems.items():
        if len(examples):
            raise LumbarFastError(f"split file {path} {problem} (e.g. {examples.iloc[0]}); "
                                  "fix or delete it")
    return split.astype(np.int64).sort_values("study_id").reset_index(drop=True)


def write_split(split: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a split CSV atomically (temporary file, then rename), so a reader never sees half a file."""
    atomic_write(Path(path), lambda tmp: split.to_csv(tmp, columns=list(SPLIT_COLUMNS), index=False))


def load_or_create_split(
    study_labels_df: pd.DataFrame,
    cache_path: str | os.PathLike,
    folds: int,
    seed: int,
    split_file: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The split to train on: `split_file` when given, else the one beside the cache, made on first use
    (beside a read-only cache, made and not written: the run folder's split.csv keeps it).

    Any file used is validated against the studies of `study_labels_df` and `folds` (LumbarFastError).
    """
    study_ids = study_labels_df["study_id"].to_numpy(dtype=np.int64)
    if split_file is not None:
        return read_split(split_file, study_ids, folds)
    path = split_path_for(cache_path, folds, seed)
    if not path.exists():
        made = make_split(study_labels_df, folds, seed)
        if not os.access(path.parent, os.W_OK):
            return made
        write_split(made, path)
    return read_split(path, study_ids, folds)


def train_val_studies(split_df: pd.DataFrame, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """(training study ids, validation study ids) of fold `fold`: that fold validates, the others train."""
    folds = np.unique(split_df["fold"])
    if fold not in folds:
        raise LumbarFastError(f"--fold {fold} is not in the split's folds 0..{folds.max()}")
    is_val = split_df["fold"].to_numpy() == fold
    studies = split_df["study_id"].to_numpy(dtype=np.int64)
    return np.sort(studies[~is_val]), np.sort(studies[is_val])


def require_studies(studies: np.ndarray, known: np.ndarray, cache_path: Path, run_path: Path) -> np.ndarray:
    """`studies` (a run's validation studies), after checking that the cache (its `known` study ids) holds
    them all: evaluating a run on another cache would silently drop studies."""
    absent = np.setdiff1d(studies, known)
    if len(absent):
        raise LumbarFastError(f"cache {cache_path} lacks {len(absent)} validation studies of run {run_path} "
                              f"(e.g. {absent[0]}); evaluate on the cache the run trained on")
    return studies
