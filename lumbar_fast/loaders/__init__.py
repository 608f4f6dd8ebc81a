"""Batches of cached uint8 images, augmented and normalised on the device: DALI by default, torch as fallback.

`build_loader` is the entry point. The loaders share their epoch order (`schedule.py`) and augmentation
parameters (`augment.py`), so they yield the same items with the same augmentation for the same
(seed, epoch). This package imports neither torch nor DALI at import time: DALI's spawned worker
processes import `lumbar_fast.loaders.source` and should start quickly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from lumbar_fast.errors import LumbarFastError, first_line
from lumbar_fast.loaders.augment import AugmentConfig

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "AugmentConfig", "Batch", "Loader", "LoaderConfig",
           "build_loader", "normalisation_stats"]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOADER_KINDS = ("auto", "dali", "torch")


@dataclass(frozen=True)
class LoaderConfig:
    """How a loader batches, augments and places its images."""

    batch_size: int = 64
    device: str = "cpu"  # a torch device ("cpu", "cuda", "cuda:1"); resolve "auto" with gpu.resolve_device
    workers: int = 4  # DALI: worker processes feeding uint8 batches (and CPU operator threads)
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # None: none; validation: never
    dtype: torch.dtype | None = None  # of the images; None: float16 on CUDA, float32 on CPU
    mean: tuple[float, ...] | None = None  # per channel, in [0, 1]; None: normalisation_stats(channels)
    std: tuple[float, ...] | None = None
    prefetch: int = 2  # DALI: batches prepared ahead of the training loop


class Batch(NamedTuple):
    """One batch: images (B, C, S, S) normalised, channels_last, on the device; labels int64 on the device;
    items int64 on the CPU (indices into the loader's item list)."""

    images: torch.Tensor
    labels: torch.Tensor
    items: torch.Tensor


class Loader(Protocol):
    """What the trainer iterates over; see docs/architecture.md."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int) -> Iterator[Batch]: ...

    def close(self) -> None: ...


def normalisation_stats(cfg: LoaderConfig, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std in uint8 units (×255): ImageNet's for 3 channels, their average otherwise."""
    mean = cfg.mean or (IMAGENET_MEAN if channels == 3 else (float(np.mean(IMAGENET_MEAN)),) * channels)
    std = cfg.std or (IMAGENET_STD if channels == 3 else (float(np.mean(IMAGENET_STD)),) * channels)
    if len(mean) != channels or len(std) != channels:
        raise LumbarFastError(f"mean/std have {len(mean)}/{len(std)} values for {channels} channels")
    return np.asarray(mean, np.float32) * 255.0, np.asarray(std, np.float32) * 255.0


def build_loader(kind: str, images_path: str | Path, rows: np.ndarray, labels: np.ndarray,
                 cfg: LoaderConfig, train: bool) -> Loader:
    """A started loader over items i = (image rows[i] of the .npy at `images_path`, labels[i]).

    `kind` "auto" tries DALI and falls back to torch with a one-line warning; "dali" fails with a one-line
    error naming `--loader torch`.
    """
    if kind not in LOADER_KINDS:
        raise LumbarFastError(f"unknown loader {kind!r}; choose one of {', '.join(LOADER_KINDS)}")
    rows, labels = _check_items(images_path, rows, labels)
    if kind != "torch":
        try:
            from lumbar_fast.loaders.dali import DaliLoader

            return DaliLoader(images_path, rows, labels, cfg, train)
        except LumbarFastError:
            raise
        except Exception as exc:  # DALI missing or failing to start: any cause means "use torch"
            reason = f"{type(exc).__name__}: {first_line(exc)}"
            if kind == "dali":
                raise LumbarFastError(f"DALI loader did not start ({reason}); use --loader torch") from exc
            log.warning("DALI loader unavailable (%s); using the torch loader", reason)
    from lumbar_fast.loaders.torch_loader import TorchLoader

    return TorchLoader(images_path, rows, labels, cfg, train)


def _check_items(images_path: str | Path, rows: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and labels as int64 arrays, checked against the image array's shape (one-line errors)."""
    path = Path(images_path)
    if not path.is_file():
        raise LumbarFastError(f"image array {path} does not exist")
    images = np.load(path, mmap_mode="r")
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise LumbarFastError(f"{path} is not an (N, S, S, C) uint8 array: {images.shape} {images.dtype}")
    rows, labels = np.asarray(rows, np.int64), np.asarray(labels, np.int64)
    if rows.shape != labels.shape or rows.ndim != 1:
        raise LumbarFastError(f"rows {rows.shape} and labels {labels.shape} must be equal-length vectors")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
        raise LumbarFastError(f"item rows must lie in 0..{len(images) - 1} of {path}")
    return rows, labels
