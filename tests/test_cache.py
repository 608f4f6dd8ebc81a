"""cache.py: tables and chunk-aligned image writes in both formats, open_cache's refusals, the reader's
array_path (.npy written once, reused while the cache is the same) and lookup."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from lumbar_fast import cache, rsna
from lumbar_fast.errors import CacheError, LumbarFastError


def tiny_cache(path, fmt: str, parts: list[int], size: int = 4):
    """A cache whose sag_t2 stacks come in `parts` pieces (image i is filled with i), one level crop per
    stack image, and a two-row errors table."""
    writer = cache.CacheWriter(path, fmt)
    total = sum(parts)
    stacks = writer.images("stacks/sag_t2/images", (size, size))
    levels = writer.images("levels/sag_t2/images", (size, size, 3))
    start = 0
    for count in parts:
        values = np.arange(start, start + count, dtype=np.uint8)
        stacks.append(cache.encode_items(np.broadcast_to(values[:, None, None], (count, size, size))))
        crops = np.broadcast_to(values[:, None, None, None], (count, size, size, 3))
        levels.append(cache.encode_items(crops))
        start += count
    stacks.close()
    levels.close()
    index = pd.DataFrame({c: np.arange(total) for c in cache.STACK_INDEX_COLUMNS})
    writer.table("stacks/sag_t2/index", cache.typed_table(index, cache.STACK_INDEX_COLUMNS))
    labels = pd.DataFrame({c: np.arange(total) for c in cache.LEVEL_LABEL_COLUMNS})
    labels["study_id"] = 100 + np.arange(total) // 5
    labels["condition"] = "spinal_canal_stenosis"
    labels["level"] = [rsna.LEVELS[i % 5] for i in range(total)]
    labels["severity"] = np.arange(total) % 3
    writer.table("levels/sag_t2/labels", cache.typed_table(labels, cache.LEVEL_LABEL_COLUMNS))
    errors = [{"study_id": 1, "series_id": 2, "path": "a/b.dcm", "reason": "not a readable DICOM file: x"},
              {"study_id": 3, "series_id": 4, "path": "ç/é.dcm", "reason": "empty series: no .dcm files"}]
    writer.table("errors", cache.typed_table(errors, cache.ERROR_COLUMNS))
    study_labels = pd.DataFrame({"study_id": [100, 101],
                                 **{c: [0, rsna.MISSING] for c in rsna.LABEL_COLUMNS}})
    writer.table("study_labels", cache.typed_table(study_labels, cache.STUDY_LABEL_COLUMNS))
    writer.finish({"params": {"size": size}, "split": "train", "source": {}, "lumbar_fast_version": "test"})
    return cache.open_cache(path)


@pytest.mark.parametrize("fmt", cache.FORMATS)
def test_images_and_tables_round_trip_whatever_the_part_sizes(tmp_path, fmt):
    parts = [1, 40, 0, 7, 33, 2]  # crosses the 32-image chunks unevenly
    reader = tiny_cache(tmp_path / f"c.{fmt}", fmt, parts)
    assert reader.sequences() == ["sag_t2"]
    total = sum(parts)
    images = reader.stack_images("sag_t2")
    assert images.shape == (total, 4, 4) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 0, 0], np.arange(total))
    np.testing.assert_array_equal(reader.level_images("sag_t2")[:, 1, 2, 2], np.arange(total))
    index = reader.stack_index("sag_t2")
    assert dict(index.dtypes.astype(str)) == cache.STACK_INDEX_COLUMNS
    labels = reader.level_labels("sag_t2")
    for column, dtype in cache.LEVEL_LABEL_COLUMNS.items():
        text = dtype == "object" and pd.api.types.is_string_dtype(labels[column])
        assert text or labels[column].dtype == dtype, column
    assert list(labels["level"][:6]) == [*rsna.LEVELS, rsna.LEVELS[0]]
    assert reader.errors()["path"].tolist() == ["a/b.dcm", "ç/é.dcm"]
    assert cache.reason_counts(reader.errors()) == {"not a readable DICOM file": 1, "empty series": 1}
    study_labels = reader.study_labels()
    assert study_labels.dtypes[rsna.LABEL_COLUMNS[0]] == np.int8
    assert study_labels[rsna.LABEL_COLUMNS[3]].tolist() == [0, rsna.MISSING]


def test_a_chunk_of_frames_joined_by_the_writer_is_what_zarr_reads_and_writes(tmp_path):
    """The appender writes each Zarr chunk itself, as its items' zstd frames one after the other (an edge
    chunk filled up with zero items): zarr decodes it through the array's own codecs, bytes then zstd, and
    the same images written by zarr read back equal; random images, as little compressible as MR noise."""
    images = np.random.default_rng(3).integers(0, 256, (cache.CHUNK_ITEMS + 5, 6, 6, 3), dtype=np.uint8)
    writer = cache.CacheWriter(tmp_path / "c.zarr", "zarr")
    appender = writer.images("levels/ax_t2/images", images.shape[1:])
    appender.append(cache.encode_items(images))
    appender.close()
    ours = zarr.open_array(tmp_path / "c.zarr" / "levels" / "ax_t2" / "images", mode="r")
    assert [codec["name"] for codec in ours.metadata.to_dict()["codecs"]] == ["bytes", "zstd"]
    np.testing.assert_array_equal(ours[...], images)
    theirs = zarr.create_array(tmp_path / "z.zarr", shape=images.shape, dtype="uint8", chunks=ours.chunks,
                               compressors=cache.ZSTD_FAST)
    theirs[...] = images
    assert theirs.metadata.to_dict()["codecs"] == ours.metadata.to_dict()["codecs"]
    np.testing.assert_array_equal(cache.decode_items(cache.encode_items(images), images.shape[1:]), images)


def test_a_resumed_array_of_another_layout_is_refused_in_one_line(tmp_path):
    """The writer writes chunk files itself, so an unfinished store's image array must be laid out as it
    writes them (CHUNK_ITEMS per chunk, bytes then zstd): another is refused, not appended to."""
    writer = cache.CacheWriter(tmp_path / "c.zarr", "zarr")
    writer.store.root.create_array("stacks/ax_t2/images", shape=(0, 4, 4), dtype="uint8", chunks=(16, 4, 4))
    with pytest.raises(CacheError, match=r"stacks/ax_t2/images is laid out as .* \(chunks \(16, 4, 4\)"):
        cache.CacheWriter(tmp_path / "c.zarr", "zarr", resume=True).images("stacks/ax_t2/images", (4, 4))


@pytest.mark.parametrize("fmt", cache.FORMATS)
def test_empty_tables_and_arrays_round_trip(tmp_path, fmt):
    writer = cache.CacheWriter(tmp_path / f"e.{fmt}", fmt)
    writer.table("errors", cache.empty_table(cache.ERROR_COLUMNS))
    writer.images("stacks/ax_t2/images", (8, 8)).close()
    writer.images("levels/ax_t2/images", (8, 8, 3)).close()
    writer.finish({})
    reader = cache.open_cache(tmp_path / f"e.{fmt}")
    assert reader.errors().empty and list(reader.errors().columns) == list(cache.ERROR_COLUMNS)
    assert reader.sequences() == ["ax_t2"] and reader.level_images("ax_t2").shape == (0, 8, 8, 3)


def test_lookup_finds_the_crop_and_its_row(tmp_path):
    reader = tiny_cache(tmp_path / "c.zarr", "zarr", [12])
    crop, row = reader.lookup(101, "spinal_canal_stenosis", "l3_l4")  # item 7
    assert int(crop[0, 0, 0]) == 7 and row["stack_row"] == 7 and row["level"] == "l3_l4"
    with pytest.raises(LumbarFastError, match="no level crop"):
        reader.lookup(999, "spinal_canal_stenosis", "l3_l4")
    with pytest.raises(LumbarFastError, match="has no ax_t2"):
        reader.lookup(101, "left_subarticular_stenosis", "l3_l4")


def test_array_path_writes_once_and_follows_the_cache(tmp_path):
    path = tmp_path / "c.zarr"
    reader = tiny_cache(path, "zarr", [5, 6])
    npy = reader.array_path("sag_t2", "levels")
    assert npy.parent == tmp_path / "c.zarr.npy"
    np.testing.assert_array_equal(np.load(npy, mmap_mode="r"), reader.level_images("sag_t2"))
    written = npy.stat().st_mtime_ns
    assert cache.open_cache(path).array_path("sag_t2", "levels") == npy and npy.stat().st_mtime_ns == written
    stacks = reader.array_path("sag_t2", "stacks")
    np.testing.assert_array_equal(np.load(stacks), reader.stack_images("sag_t2"))
    rebuilt = tiny_cache(path, "zarr", [3])  # the same path, another cache: a new file, the old one gone
    fresh = rebuilt.array_path("sag_t2", "levels")
    assert fresh != npy and not npy.exists() and np.load(fresh).shape[0] == 3
    with pytest.raises(LumbarFastError, match="unknown array kind"):
        rebuilt.array_path("sag_t2", "pngs")


def test_array_path_of_a_read_only_cache_goes_to_the_user_cache_folder(tmp_path, monkeypatch):
    """A cache on a read-only file system (os.access says so even to root) exports its .npy copies to
    $LUMBAR_FAST_NPY_DIR, one folder per cache path, and cleans its stale ones there as beside a cache."""
    shelf = tmp_path / "read-only"
    shelf.mkdir()
    reader = tiny_cache(shelf / "c.zarr", "zarr", [5, 6])
    monkeypatch.setattr(cache.os, "access", lambda path, mode: Path(path) != shelf)
    monkeypatch.setenv("LUMBAR_FAST_NPY_DIR", str(tmp_path / "user"))
    npy = reader.array_path("sag_t2", "levels")
    assert npy.parent.parent == tmp_path / "user" and npy.parent.name.startswith("c.zarr-")
    np.testing.assert_array_equal(np.load(npy), reader.level_images("sag_t2"))
    assert not (shelf / "c.zarr.npy").exists()
    rebuilt = tiny_cache(shelf / "c.zarr", "zarr", [3])
    assert rebuilt.array_path("sag_t2", "levels").parent == npy.parent and not npy.exists()


def test_open_cache_refuses_what_is_not_a_finished_cache_of_this_schema(tmp_path):
    with pytest.raises(CacheError, match="no cache at"):
        cache.open_cache(tmp_path / "absent.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CacheError, match="not a lumbar-fast cache"):
        cache.open_cache(tmp_path / "folder")
    (tmp_path / "folder" / "config.json").write_text("{}")  # a run folder given for its cache
    with pytest.raises(CacheError, match="is a run folder, not a cache"):
        cache.open_cache(tmp_path / "folder")
    zarr.open_group(tmp_path / "unfinished.zarr", mode="w").create_array("x", shape=(1,), dtype="uint8")
    with pytest.raises(CacheError, match="not a finished lumbar-fast cache"):
        cache.open_cache(tmp_path / "unfinished.zarr")
    reader = tiny_cache(tmp_path / "old.zarr", "zarr", [2])
    zarr.open_group(reader.path, mode="r+").attrs["schema_version"] = cache.SCHEMA_VERSION + 1
    with pytest.raises(CacheError, match="schema version"):
        cache.open_cache(reader.path)
    with pytest.raises(LumbarFastError, match="unknown sequence"):
        tiny_cache(tmp_path / "c.h5", "hdf5", [2]).stack_images("sag_t3")


def test_hdf5_attributes_are_json(tmp_path):
    reader = tiny_cache(tmp_path / "c.h5", "hdf5", [2])
    assert reader.attrs["schema_version"] == cache.SCHEMA_VERSION and reader.attrs["params"] == {"size": 4}
    assert json.loads(json.dumps(reader.attrs)) == reader.attrs


def test_a_table_in_another_layout_is_a_one_line_cache_error(tmp_path):
    reader = tiny_cache(tmp_path / "c.zarr", "zarr", [2])
    group = zarr.open_group(reader.path, mode="r+")
    name = next(n for n in ("errors", "study_labels") if n in group)
    del group[name]
    group.create_array(name, shape=(3,), dtype="uint8")  # how an older table layout looks to this reader
    with pytest.raises(CacheError, match=f"its {name} table cannot be read"):
        getattr(cache.open_cache(reader.path), name)()
