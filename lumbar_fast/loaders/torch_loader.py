"""The torch loader: the uint8 images resident on the device, batches gathered by index, augmented there.

The fallback where DALI is missing, and the comparison point for it. It yields the same items with the same
augmentation parameters as the DALI loader (`schedule.py`, `augment.py`), applied with `affine_grid` +
`grid_sample` and a per-item normalisation on the device. On a CUDA device the images live in GPU memory
(an RSNA level-crop split is a few GB); on the CPU everything runs on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lumbar_fast.loaders import Batch, LoaderConfig, normalisation_stats
from lumbar_fast.loaders.augment import AugmentParams, augment_params, identity_params, normalisation
from lumbar_fast.loaders.schedule import EpochPlan


def torch_theta(matrix: np.ndarray, size: int) -> np.ndarray:
    """`affine_grid` thetas (B, 2, 3) (normalised coordinates, align_corners=False) of output→input pixel
    matrices (DALI's `warp_affine` convention, the pixel grid spanning [0, size])."""
    linear, offset = matrix[:, :, :2], matrix[:, :, 2]
    theta_offset = linear.sum(axis=2) + 2.0 * offset / size - 1.0
    return np.concatenate([linear, theta_offset[:, :, None]], axis=2).astype(np.float32)


class TorchLoader:
    """Batches of (rows[i], labels[i]) items from a uint8 .npy, held on the device; see build_loader."""

    def __init__(self, images_path: str | Path, rows: np.ndarray, labels: np.ndarray, cfg: LoaderConfig,
                 train: bool) -> None:
        self._device = torch.device(cfg.device)
        self._dtype = cfg.dtype or (torch.float16 if self._device.type == "cuda" else torch.float32)
        self._plan = EpochPlan(len(rows), cfg.batch_size, cfg.seed, cfg.rank, cfg.world_size, train)
        self._augment = cfg.augment if train else None
        used_rows, local_rows = np.unique(rows, return_inverse=True)  # hold only the rows these items use
        images = np.load(images_path, mmap_mode="r")[used_rows]
        self._size, channels = images.shape[1], images.shape[3]
        self._mean, self._std = normalisation_stats(cfg, channels)
        self._images = torch.from_numpy(images).to(self._device)
        self._rows = torch.from_numpy(local_rows).to(self._device)
        self._labels = torch.from_numpy(labels).to(self._device)

    def __len__(self) -> int:
        return len(self._plan)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of `epoch`, prepared on the device in the caller's thread."""
        for index in range(len(self._plan)):
            items = self._plan.batch(epoch, index)
            if self._augment is None:
                params = identity_params(len(items))
            else:
                params = augment_params(self._augment, self._plan.seed, epoch, items, self._size)
            yield self._batch(items, params)

    def close(self) -> None:
        """Release the resident images."""
        self._images = self._rows = self._labels = None

    def _batch(self, items: np.ndarray, params: AugmentParams) -> Batch:
        """Gather, augment and normalise one batch of items on the device."""
        index = torch.from_numpy(items).to(self._device, non_blocking=True)
        pixels = self._images[self._rows[index]].permute(0, 3, 1, 2)  # NCHW view of NHWC: channels_last
        if params.slice_flip.any():
            flip = self._to_device(params.slice_flip)[:, None, None, None]
            pixels = torch.where(flip, pixels.flip(1), pixels)
        pixels = pixels.float()
        if self._augment is not None:
            pixels = self._warp(pixels, params.matrix)
        scale, shift = normalisation(params, self._mean, self._std)
        images = pixels * self._to_device(scale)[:, :, None, None] + self._to_device(shift)[:, :, None, None]
        images = images.to(self._dtype, memory_format=torch.channels_last)
        return Batch(images, self._labels[index], torch.from_numpy(items))

    def _warp(self, pixels: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
        """Bilinear warp by output→input matrices, zeros outside, rounded to uint8 levels like DALI's."""
        theta = self._to_device(torch_theta(matrix, self._size))
        grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
        warped = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return warped.round_()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """A small host array on the loader's device."""
        return torch.from_numpy(array).to(self._device, non_blocking=True)
