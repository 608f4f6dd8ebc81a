"""Loaders: epoch order, augmentation parameters, DALI (CPU) and torch batches, and their agreement.

The input is what the cache writes: an uncompressed (N, S, S, C) uint8 .npy; items point at its rows.
"""

import importlib.util
import logging
import sys

import numpy as np
import pytest
import torch

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders import AugmentConfig, LoaderConfig, build_loader, normalisation_stats
from lumbar_fast.loaders.augment import augment_params, identity_params
from lumbar_fast.loaders.gpu import _visible, gpu_count, resolve_device
from lumbar_fast.loaders.schedule import EpochPlan
from lumbar_fast.loaders.torch_loader import TorchLoader


def dali_installed() -> bool:
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


needs_dali = pytest.mark.skipif(not dali_installed(), reason="DALI is not installed")
SIZE, CHANNELS, N_IMAGES, N_ITEMS = 32, 3, 30, 45
KINDS = (pytest.param("dali", marks=needs_dali), "torch")
NO_AUGMENT = AugmentConfig(rotate_deg=0, scale=0, shift=0, brightness=0, contrast=0, hflip=0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[str, np.ndarray]:
    """A smooth random (N, S, S, C) uint8 array saved as .npy (smooth: bilinear warps of it agree closely)."""
    coarse = torch.rand(N_IMAGES, CHANNELS, 6, 6) * 255
    fine = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear", align_corners=False)
    array = np.ascontiguousarray(fine.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
    path = tmp_path_factory.mktemp("loaders") / "images.npy"
    np.save(path, array)
    return str(path), array


@pytest.fixture(scope="module")
def items() -> tuple[np.ndarray, np.ndarray]:
    """More items than images: several items share an image row (the slice view)."""
    rng = np.random.default_rng(1)
    return rng.integers(0, N_IMAGES, N_ITEMS), rng.integers(0, 3, N_ITEMS)


def epoch_batches(loader, epoch: int) -> list:
    return list(loader.epoch(epoch))


def items_of(batches) -> np.ndarray:
    return np.concatenate([b.items.numpy() for b in batches])


def expected_images(array: np.ndarray, rows: np.ndarray, cfg: LoaderConfig) -> torch.Tensor:
    """Plain normalisation of the rows, (B, C, S, S) float32."""
    mean, std = normalisation_stats(cfg, CHANNELS)
    return torch.from_numpy((array[rows].astype(np.float32) - mean) / std).permute(0, 3, 1, 2)


# --- epoch order and augmentation parameters (pure numpy) ---

def test_training_shares_are_disjoint_equal_and_cover_all_but_a_remainder():
    n, batch, world = 50, 4, 3
    plans = [EpochPlan(n, batch, seed=7, rank=r, world_size=world) for r in range(world)]
    for epoch in (0, 1):
        shares = [np.concatenate([p.batch(epoch, i) for i in range(len(p))]) for p in plans]
        assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(plans[0]) * batch
        joined = np.concatenate(shares)
        assert len(np.unique(joined)) == len(joined)  # disjoint, no duplicates
        assert n - len(joined) < world * batch
    order = [np.concatenate([plans[0].batch(e, i) for i in range(len(plans[0]))]) for e in (0, 1)]
    assert not np.array_equal(*order)
    with pytest.raises(IndexError):
        plans[0].batch(0, len(plans[0]))


def test_validation_covers_every_item_once_across_ranks():
    plans = [EpochPlan(23, 4, rank=r, world_size=3, train=False) for r in range(3)]
    batches = [p.batch(5, i) for p in plans for i in range(len(p))]
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(23))
    assert {len(b) for b in batches} == {4, 3}  # the last batch of a rank may be smaller


@pytest.mark.parametrize("bad", [dict(n_items=5, batch_size=4, world_size=2), dict(n_items=0, batch_size=1),
                                 dict(n_items=9, batch_size=1, rank=2, world_size=2)])
def test_impossible_plans_are_one_line_errors(bad):
    with pytest.raises(LumbarFastError):
        EpochPlan(**bad)


def test_augmentation_is_a_pure_function_of_seed_epoch_item():
    cfg = AugmentConfig(vflip=0.5, slice_flip=0.5)
    items = np.array([3, 17, 4, 99, 0])
    a = augment_params(cfg, 1, 2, items, SIZE)
    reordered = augment_params(cfg, 1, 2, items[::-1], SIZE)  # not a function of the position in the batch
    for field in ("matrix", "gain", "bias", "slice_flip"):
        assert np.array_equal(getattr(a, field), getattr(reordered, field)[::-1])
    assert not np.allclose(a.matrix, augment_params(cfg, 1, 3, items, SIZE).matrix)  # another epoch
    assert not np.allclose(a.gain, augment_params(cfg, 2, 2, items, SIZE).gain)  # another seed
    off = augment_params(NO_AUGMENT, 1, 2, items, SIZE)
    identity = identity_params(len(items))
    assert np.allclose(off.matrix, identity.matrix, atol=1e-6) and np.allclose(off.gain, 1)


# --- the loaders ---

@pytest.mark.parametrize("kind", KINDS)
def test_validation_batches(kind, images, items):
    """Shapes, dtype, channels_last, exact normalisation, labels, and every item once across 2 ranks."""
    path, array = images
    rows, labels = items
    seen = []
    for rank in (0, 1):
        cfg = LoaderConfig(batch_size=8, workers=1, rank=rank, world_size=2)
        loader = build_loader(kind, path, rows, labels, cfg, train=False)
        batches = epoch_batches(loader, 0)
        loader.close()
        assert len(batches) == len(loader) == 3  # 23 then 22 items: 8 + 8 + 7 / 8 + 8 + 6
        for batch in batches:
            assert batch.images.shape == (len(batch.items), CHANNELS, SIZE, SIZE)
            assert batch.images.dtype == torch.float32
            assert batch.images.is_contiguous(memory_format=torch.channels_last)
            assert batch.labels.dtype == batch.items.dtype == torch.int64
            assert torch.equal(batch.labels, torch.from_numpy(labels[batch.items.numpy()]))
            expected = expected_images(array, rows[batch.items.numpy()], cfg)
            torch.testing.assert_close(batch.images, expected, atol=1e-5, rtol=1e-5)
        seen.append(items_of(batches))
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(N_ITEMS))


@pytest.mark.parametrize("kind", KINDS)
def test_training_epochs(kind, images, items):
    """Ranks disjoint and equal, no duplicates, few misses; an epoch repeats exactly, another differs."""
    path, _ = images
    rows, labels = items
    world, batch = 2, 4
    loaders = [build_loader(kind, path, rows, labels, LoaderConfig(batch_size=batch, workers=1, rank=r,
                                                                   world_size=world), train=True)
               for r in range(world)]
    try:
        first = [epoch_batches(loader, 1) for loader in loaders]
        shares = [items_of(b) for b in first]
        assert len(shares[0]) == len(shares[1]) == len(loaders[0]) * batch
        joined = np.concatenate(shares)
        assert len(np.unique(joined)) == len(joined)
        assert N_ITEMS - len(joined) < world * batch
        again = epoch_batches(loaders[0], 1)  # out of order: the DALI pipeline restarts at epoch 1
        assert np.array_equal(items_of(again), shares[0])
        assert all(torch.equal(a.images, b.images) for a, b in zip(again, first[0], strict=True))
        assert not np.array_equal(items_of(epoch_batches(loaders[0], 2)), shares[0])
    finally:
        for loader in loaders:
            loader.close()


@needs_dali
@pytest.mark.parametrize("augment", [NO_AUGMENT, AugmentConfig(vflip=0.5, slice_flip=0.5)],
                         ids=["plain", "augmented"])
def test_dali_and_torch_agree(augment, images, items):
    """The same items and the same augmentation: equal without warping, within a uint8 level with it."""
    path, _ = images
    rows, labels = items
    cfg = LoaderConfig(batch_size=8, workers=1, seed=3, augment=augment)
    batches = {}
    for kind in ("dali", "torch"):
        loader = build_loader(kind, path, rows, labels, cfg, train=True)
        batches[kind] = epoch_batches(loader, 4)
        loader.close()
    for dali, torch_ in zip(*batches.values(), strict=True):
        assert torch.equal(dali.items, torch_.items)
        difference = (dali.images - torch_.images).abs()
        if augment is NO_AUGMENT:
            assert difference.max() < 1e-5
        else:  # bilinear weights differ in the last bits: at most one uint8 level (1 / 255 / std ≈ 0.02)
            assert difference.max() < 0.03 and difference.mean() < 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_flips_mirror_columns_and_slices(kind, images, items):
    """A known answer for the matrix convention and the slice flip: with nothing else, hflip mirrors the
    columns exactly and slice_flip reverses the channels (before normalisation)."""
    path, array = images
    rows, labels = items
    flips = AugmentConfig(rotate_deg=0, scale=0, shift=0, brightness=0, contrast=0, hflip=1, slice_flip=1)
    cfg = LoaderConfig(batch_size=8, workers=1, augment=flips)
    loader = build_loader(kind, path, rows, labels, cfg, train=True)
    batch = next(iter(loader.epoch(0)))
    loader.close()
    flipped = np.ascontiguousarray(array[:, :, ::-1, ::-1])
    expected = expected_images(flipped, rows[batch.items.numpy()], cfg)
    torch.testing.assert_close(batch.images, expected, atol=1e-5, rtol=1e-5)


def test_normalisation_stats():
    mean, std = normalisation_stats(LoaderConfig(), 3)
    assert np.allclose(mean, np.array([0.485, 0.456, 0.406]) * 255)
    grey_mean, grey_std = normalisation_stats(LoaderConfig(), 1)
    assert grey_mean.shape == grey_std.shape == (1,) and np.isclose(grey_mean[0], mean.mean())
    with pytest.raises(LumbarFastError, match="3 channels"):
        normalisation_stats(LoaderConfig(mean=(0.5,), std=(0.2,)), 3)


def test_auto_falls_back_to_torch_and_dali_fails_in_one_line(images, items, monkeypatch, caplog):
    path, _ = images
    rows, labels = items
    monkeypatch.setitem(sys.modules, "lumbar_fast.loaders.dali", None)  # as if DALI were not installed
    with caplog.at_level(logging.WARNING):
        loader = build_loader("auto", path, rows, labels, LoaderConfig(batch_size=8), train=False)
    assert isinstance(loader, TorchLoader)
    assert "using the torch loader" in caplog.text
    with pytest.raises(LumbarFastError, match="--loader torch"):
        build_loader("dali", path, rows, labels, LoaderConfig(batch_size=8), train=False)


def test_bad_inputs_are_one_line_errors(images, items, tmp_path):
    path, _ = images
    rows, labels = items
    cfg = LoaderConfig(batch_size=8)
    with pytest.raises(LumbarFastError, match="unknown loader"):
        build_loader("fast", path, rows, labels, cfg, train=True)
    with pytest.raises(LumbarFastError, match="rows"):
        build_loader("torch", path, rows + N_IMAGES, labels, cfg, train=True)
    with pytest.raises(LumbarFastError, match="does not exist"):
        build_loader("torch", tmp_path / "missing.npy", rows, labels, cfg, train=True)
    np.save(tmp_path / "float.npy", np.zeros((2, SIZE, SIZE, 3), np.float32))
    with pytest.raises(LumbarFastError, match="uint8"):
        build_loader("torch", tmp_path / "float.npy", rows % 2, labels, cfg, train=True)
    with pytest.raises(LumbarFastError, match="fewer than one batch"):
        build_loader("torch", path, rows, labels, LoaderConfig(batch_size=64), train=True)


# --- devices ---

def test_device_choices_follow_the_gpu_count():
    """(That the NVML probe leaves CUDA uninitialised can only show on a GPU machine, where DALI's workers
    need it: benchmarks/gpu_check.sh starts them after the probe.)"""
    assert resolve_device("auto").type == ("cuda" if gpu_count() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(gpu_count() > 0, reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_one_line_error():
    with pytest.raises(LumbarFastError, match="--device cpu"):
        resolve_device("cuda")


def test_cuda_visible_devices_limits_the_count(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0,7,2")
    assert _visible(4) == 2  # CUDA stops at the first invalid entry
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _visible(4) == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _visible(4) == 4
