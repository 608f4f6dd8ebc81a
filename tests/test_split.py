"""The study-level split: one row per study, folds partition the studies, stratified, seeded, checked."""

import numpy as np
import pandas as pd
import pytest

from lumbar_fast import rsna, split
from lumbar_fast.errors import LumbarFastError


def study_labels(n_studies: int = 60, seed: int = 0) -> pd.DataFrame:
    """cache.study_labels() format: study_id + 25 int8 class ids, some missing, three unlabelled studies."""
    rng = np.random.default_rng(seed)
    codes = rng.choice([-1, 0, 1, 2], size=(n_studies, 25), p=[0.1, 0.6, 0.2, 0.1]).astype(np.int8)
    codes[:3] = rsna.MISSING
    frame = pd.DataFrame(codes, columns=list(rsna.LABEL_COLUMNS))
    frame.insert(0, "study_id", rng.choice(10**9, n_studies, replace=False).astype(np.int64))
    return frame


def test_one_row_per_study_and_folds_partition_the_studies():
    labels = study_labels(63)
    result = split.make_split(labels, folds=5, seed=1)
    assert list(result.columns) == ["study_id", "fold"]
    assert sorted(result["study_id"]) == sorted(labels["study_id"]) and result["study_id"].is_unique
    sizes = result["fold"].value_counts()
    assert sorted(sizes.index) == [0, 1, 2, 3, 4] and sizes.max() - sizes.min() <= 1
    seen = []
    for fold in range(5):
        train, val = split.train_val_studies(result, fold)
        assert not set(train) & set(val)
        assert set(train) | set(val) == set(labels["study_id"])
        seen += list(val)
    assert sorted(seen) == sorted(labels["study_id"])


def test_deterministic_seeded_and_independent_of_row_order():
    labels = study_labels()
    first = split.make_split(labels, folds=4, seed=3)
    shuffled = labels.sample(frac=1.0, random_state=0)
    pd.testing.assert_frame_equal(split.make_split(shuffled, folds=4, seed=3), first)
    assert not split.make_split(labels, folds=4, seed=4)["fold"].equals(first["fold"])


def test_every_stratum_spreads_evenly_over_the_folds():
    labels = study_labels(200, seed=2)
    result = split.make_split(labels, folds=5, seed=0)
    keys = split.stratum_keys(labels.sort_values("study_id").reset_index(drop=True))
    counts = pd.crosstab(keys.to_numpy(), result["fold"].to_numpy()).reindex(columns=range(5), fill_value=0)
    assert (counts.max(axis=1) - counts.min(axis=1)).max() <= 1
    spinal = labels.set_index("study_id")[[c for c in rsna.LABEL_COLUMNS if "spinal" in c]]
    severe = result["study_id"].map(spinal.max(axis=1)) == 2
    severe_per_fold = severe.groupby(result["fold"]).sum()     # strata "spinal=2 ..." are dealt in one run
    assert severe.sum() >= 10 and severe_per_fold.max() - severe_per_fold.min() <= 1


def test_bad_fold_counts_are_errors():
    with pytest.raises(LumbarFastError, match="at least 2"):
        split.make_split(study_labels(), folds=1)
    with pytest.raises(LumbarFastError, match="cannot fill 5 folds"):
        split.make_split(study_labels(4), folds=5)
    with pytest.raises(LumbarFastError, match="--fold 5"):
        split.train_val_studies(split.make_split(study_labels(), folds=5), 5)


def test_split_file_is_written_once_beside_the_cache_and_reused(tmp_path):
    cache = tmp_path / "cache.zarr"
    path = split.split_path_for(cache, folds=3, seed=9)
    assert path == tmp_path / "cache.zarr.split-k3-s9.csv"
    labels = study_labels()
    made = split.load_or_create_split(labels, cache, folds=3, seed=9)
    pd.testing.assert_frame_equal(made, split.make_split(labels, folds=3, seed=9))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    edited = made.assign(fold=(made["fold"] + 1) % 3)     # a file already there is reused, not remade
    split.write_split(edited, path)
    pd.testing.assert_frame_equal(split.load_or_create_split(labels, cache, folds=3, seed=9), edited)


def test_a_read_only_cache_folder_gets_its_split_made_and_not_written(tmp_path, monkeypatch):
    monkeypatch.setattr(split.os, "access", lambda path, mode: path != tmp_path)  # as on a read-only mount
    labels = study_labels()
    made = split.load_or_create_split(labels, tmp_path / "cache.zarr", folds=3, seed=9)
    pd.testing.assert_frame_equal(made, split.make_split(labels, folds=3, seed=9))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("change, message", [
    (lambda s: s.assign(study_id=s["study_id"].where(s.index != 0, 12345)), "not in the cache"),
    (lambda s: s.iloc[1:], "lacks studies of the cache"),
    (lambda s: pd.concat([s, s.iloc[:1]]), "lists a study twice"),
    (lambda s: s.assign(fold=s["fold"].where(s.index != 0, 7)), "outside 0..2"),
    (lambda s: s.assign(fold=s["fold"] % 2), "empty folds"),
    (lambda s: s.rename(columns={"fold": "k"}), "lacks the column"),
    (lambda s: s.assign(extra=1), "must have columns study_id,fold; it has study_id,fold,extra"),
    (lambda s: s.assign(fold="a"), "column fold, row 1: 'a' is not an integer"),
])
def test_given_split_file_is_validated(tmp_path, change, message):
    labels = study_labels()
    given = tmp_path / "mine.csv"
    change(split.make_split(labels, folds=3, seed=0)).to_csv(given, index=False)
    with pytest.raises(LumbarFastError, match=message):
        split.load_or_create_split(labels, tmp_path / "cache.zarr", folds=3, seed=0, split_file=given)


def test_unreadable_split_file_is_an_error(tmp_path):
    with pytest.raises(LumbarFastError, match="split file .*none.csv does not exist"):
        split.load_or_create_split(study_labels(), tmp_path / "c", 3, 0, split_file=tmp_path / "none.csv")
