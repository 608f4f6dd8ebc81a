"""ingest end to end on one batch of damaged files: every malformation of tests/malformations.py in a series
of its own (one damaged file per series). The ingest exits 0 without a traceback, names every damaged file in
its errors table and closing lines, and equals an ingest of the same data with the damaged files deleted;
every untouched series is byte-identical to a clean ingest."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumbar_fast import cache
from lumbar_fast.phantom import PitfallRates
from tests.cache_compare import assert_same_content
from tests.malformations import MALFORMATIONS, Malformation

#: unlabelled files copied into each damaged series besides its labelled ones
UNLABELLED_FILES = 3
#: the damaged file of every LABELLED_EVERY-th series is a labelled one
LABELLED_EVERY = 4
SIZE = 32


@dataclass(frozen=True)
class Damage:
    """One damaged series: the malformation and the file it damaged."""

    malformation: Malformation
    path: Path


@pytest.fixture(scope="module")
def clean(make_synth) -> Path:
    """2 uncompressed phantom studies of 64-pixel images (the other pitfalls on), nothing damaged."""
    return make_synth(2, 0, seed=11, image_size=64, pitfalls=PitfallRates().with_rates(rle=0.0, j2k=0.0,
                                                                                         corrupt=0.0))


def copy_series(root: Path, clean: Path, count: int) -> list[tuple[int, int, list[int], list[int]]]:
    """Add `count` series to the copy of `clean` at `root`, each a few files of one clean series (cycled)
    under a new series id in the same study, with the coordinate rows of its labelled files; returns (study,
    series, labelled instances, unlabelled instances) of each."""
    descriptions = pd.read_csv(root / "train_series_descriptions.csv")
    coordinates = pd.read_csv(root / "train_label_coordinates.csv")
    originals = descriptions.to_dict("records")
    added, new_descriptions, new_coordinates = [], [], []
    for k in range(count):
        source = originals[k % len(originals)]
        series_id = 4_000_000_000 + k
        folder = clean / "train_images" / str(source["study_id"]) / str(source["series_id"])
        rows = coordinates[coordinates["series_id"] == source["series_id"]]
        labelled = sorted(set(rows["instance_number"]))
        unlabelled = sorted({int(p.stem) for p in folder.glob("*.dcm")} - set(labelled))[:UNLABELLED_FILES]
        target = root / "train_images" / str(source["study_id"]) / str(series_id)
        target.mkdir()
        for instance in labelled + unlabelled:
            shutil.copy(folder / f"{instance}.dcm", target / f"{instance}.dcm")
        new_descriptions.append({**source, "series_id": series_id})
        new_coordinates.append(rows.assign(series_id=series_id))
        added.append((source["study_id"], series_id, labelled, unlabelled))
    pd.concat([descriptions, pd.DataFrame(new_descriptions)]).to_csv(root / "train_series_descriptions.csv",
                                                                     index=False)
    pd.concat([coordinates, *new_coordinates]).to_csv(root / "train_label_coordinates.csv", index=False)
    return added


@pytest.fixture(scope="module")
def fuzzed(clean, tmp_path_factory) -> tuple[Path, Path, list[Damage], tuple[int, Path]]:
    """(damaged folder, the same folder with the damaged files deleted, the damages, (series id, file) of a
    one-file series whose file is damaged)."""
    base = tmp_path_factory.mktemp("fuzz")
    damaged, deleted = base / "damaged", base / "deleted"
    shutil.copytree(clean, damaged)
    series = copy_series(damaged, clean, len(MALFORMATIONS) + 1)
    damages = []
    for k, (malformation, (study, series_id, labelled, unlabelled)) in enumerate(
            zip(MALFORMATIONS, series, strict=False)):
        instance = victim(k, labelled, unlabelled)
        path = damaged / "train_images" / str(study) / str(series_id) / f"{instance}.dcm"
        malformation.damage(path)
        damages.append(Damage(malformation, path))
    study, series_id, _, unlabelled = series[-1]
    lonely = damaged / "train_images" / str(study) / str(series_id) / f"{unlabelled[0]}.dcm"
    for path in lonely.parent.glob("*.dcm"):
        if path != lonely:
            path.unlink()
    MALFORMATIONS[0].damage(lonely)
    shutil.copytree(damaged, deleted, symlinks=True)  # a link to nothing stays one
    for path in [damage.path for damage in damages] + [lonely]:
        _remove(deleted / path.relative_to(damaged))
    return damaged, deleted, damages, (series_id, lonely)


def victim(k: int, labelled: list[int], unlabelled: list[int]) -> int:
    """The instance to damage in the k-th series: a labelled one every LABELLED_EVERY-th series."""
    if k % LABELLED_EVERY == 0 or not unlabelled:
        return labelled[k // LABELLED_EVERY % len(labelled)]
    return unlabelled[k % len(unlabelled)]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def records(errors: pd.DataFrame, root: Path, but_series: int) -> list[tuple]:
    """The error rows as tuples with paths relative to the data folder `root`, one series left out."""
    return [(row.study_id, row.series_id, str(Path(row.path).relative_to(root)), row.reason)
            for row in errors[errors["series_id"] != but_series].itertuples(index=False)]


def series_content(reader: cache.CacheReader, seq: str, series_ids: set[int]) -> tuple:
    """The stack images, index, level images and labels (stack_row aside: it counts earlier series too) of
    some series."""
    index, labels = reader.stack_index(seq), reader.level_labels(seq)
    rows = index["series_id"].isin(series_ids).to_numpy()
    crops = labels["series_id"].isin(series_ids).to_numpy()
    return (reader.stack_images(seq)[rows], index[rows].reset_index(drop=True),
            reader.level_images(seq)[crops], labels[crops].drop(columns="stack_row").reset_index(drop=True))


def test_one_batch_of_damaged_files(clean, fuzzed, make_cache, run_cli, tmp_path):
    damaged, deleted, damages, (lonely_series, lonely_file) = fuzzed
    out = tmp_path / "damaged.zarr"
    command = [sys.executable, "-m", "lumbar_fast", "ingest", str(damaged), "--out", str(out), "--size",
               str(SIZE), "--workers", "2", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "Traceback" not in result.stdout
    reader = cache.open_cache(out)
    errors = reader.errors()

    # every damaged file named once with its own reason, besides the "labelled instance" row of labelled ones
    own = errors[~errors["reason"].str.startswith("labelled instance missing")]
    for damage in damages:
        rows = own[own["path"] == str(damage.path)]
        assert len(rows) == 1, (damage.malformation.name, rows)
        assert re.search(damage.malformation.reason, rows["reason"].iloc[0]), \
            (damage.malformation.name, rows["reason"].iloc[0])
    lonely = own[own["series_id"] == lonely_series]
    assert set(lonely["path"]) == {str(lonely_file), str(lonely_file.parent)}
    assert "empty series: no usable image" in set(lonely["reason"])

    # the rest as if the damaged files were not there
    reference = cache.open_cache(make_cache(deleted, size=SIZE))
    assert_same_content(reader, reference)
    damaged_paths = {str(d.path) for d in damages}
    others = errors[~errors["path"].isin(damaged_paths) | ~errors.index.isin(own.index)]
    assert records(others, damaged, lonely_series) == records(reference.errors(), deleted, lonely_series)

    # untouched series: byte-identical to a clean ingest
    plain = cache.open_cache(make_cache(clean, size=SIZE))
    originals = set(pd.read_csv(clean / "train_series_descriptions.csv")["series_id"])
    for seq in plain.sequences():
        for ours, theirs in zip(series_content(reader, seq, originals), series_content(plain, seq, originals),
                                strict=True):
            if isinstance(ours, np.ndarray):
                np.testing.assert_array_equal(ours, theirs)
            else:
                pd.testing.assert_frame_equal(ours, theirs)

    # where the problems are: the closing lines and `info --errors` / `--csv`
    lines = cache.error_lines(errors)
    assert all(f"  {line}" in result.stdout.splitlines() for line in lines[:5])
    assert f"lumbar-fast info {out} --errors" in result.stdout
    code, listed, _ = run_cli("info", out, "--errors")
    assert code == 0 and listed.splitlines() == lines
    code, listed, _ = run_cli("info", out, "--errors", "--json")  # the same rows, as JSON
    assert code == 0 and [row["reason"] for row in json.loads(listed)] == errors["reason"].tolist()
    code, _, _ = run_cli("info", out, "--csv", tmp_path / "new" / "errors.csv")  # its folder made
    assert code == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "new" / "errors.csv", keep_default_na=False), errors)
