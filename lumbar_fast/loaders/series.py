"""The locator's batches: one series per step, every slice of it a 2.5D image (the slice and its neighbours
below and above in its stack), resized to the model's input size and normalised on the device. Training
batches take a random window of at most `max_slices` consecutive slices and a random in-plane affine and
intensity change (the targets moved with the image), a pure function of (seed, epoch, item), so that a
resumed run sees the same ones. (The classifier's crops go through `build_loader`; a series is a batch of
its own, of its own length, so it has its own loader.)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from lumbar_fast.locator.targets import LocatorData, Series, SeriesTargets, window
from lumbar_fast.models.locator import SliceLayout

#: input normalisation of the uint8 slices (the 2.5D channels are not RGB, so one mean/std for all)
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


def series_input(images: np.ndarray, series: Series) -> torch.Tensor:
    """The 2.5D input of every slice of a series: (N, 3, S, S) in [0, 1], channels (previous, slice, next)."""
    stacked = np.stack([images[series.prev_rows], images[series.rows], images[series.next_rows]], axis=1)
    return torch.from_numpy(stacked).float() / 255.0


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] → the model's input scale."""
    return (images - PIXEL_MEAN) / PIXEL_STD


def resize_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a batch of (N, C, S, S) inputs to the model's image size (a no-op when it already fits)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def model_input(images: np.ndarray, series: Series, size: int, device: torch.device) -> torch.Tensor:
    """A whole series as the model reads it: 2.5D, resized, normalised, channels_last on `device`."""
    inputs = normalise(resize_input(series_input(images, series).to(device), size))
    return inputs.contiguous(memory_format=torch.channels_last)


def augment_params(seed: int, epoch: int, item: int) -> dict[str, float]:
    """Random in-plane affine and intensity change of one series in one epoch: a pure function of its inputs,
    so a resumed run sees the same augmentations."""
    rng = np.random.default_rng([seed, epoch, item])
    return {"scale": rng.uniform(0.85, 1.15), "angle": rng.uniform(-10, 10),
            "shift_x": rng.uniform(-0.1, 0.1), "shift_y": rng.uniform(-0.1, 0.1),
            "gamma": math.exp(rng.uniform(-0.25, 0.25)),
            "contrast": rng.uniform(0.85, 1.15), "brightness": rng.uniform(-0.05, 0.05),
            "window_start": rng.uniform()}


def augment(images: torch.Tensor, uv: np.ndarray,
            params: dict[str, float]) -> tuple[torch.Tensor, np.ndarray]:
    """Apply one affine (same for every slice) and intensity change to (N, C, H, W) images in [0, 1];
    returns the images and the targets' (u, v) moved with them."""
    angle = math.radians(params["angle"])
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = params["scale"] * np.array([[cos, -sin], [sin, cos]])
    shift = np.array([params["shift_x"], params["shift_y"]])
    theta = torch.tensor(np.concatenate([rotation, shift[:, None]], axis=1), dtype=images.dtype,
                         device=images.device)
    grid = F.affine_grid(theta[None].expand(len(images), 2, 3), list(images.shape),
                                           align_corners=False)
    moved = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    moved = moved.clamp(0, 1) ** params["gamma"] * params["contrast"] + params["brightness"]
    # grid_sample reads the input at rotation·p_out + shift: a point p_in lands at rotation⁻¹·(p_in - shift)
    p_out = (np.linalg.inv(rotation) @ (2 * uv - 1 - shift).T).T
    return moved, (p_out + 1) / 2


@dataclass(frozen=True)
class SeriesLoaderConfig:
    """How the series loader cuts, augments and places a series."""

    image_size: int
    device: torch.device
    seed: int = 0
    max_slices: int = 64  # training: a random window of at most this many consecutive slices
    augment: bool = True  # training: a random affine and intensity change
    limit: int | None = None  # training: at most this many series per epoch


class SeriesBatch(NamedTuple):
    """One series: its inputs (N, 3, S, S) normalised, channels_last, on the device; its slice geometry
    (`Series.layout`); its targets (positions in the possibly cut series, points moved by the augmentation);
    its item (index into the loader's data.series)."""

    images: torch.Tensor
    layout: SliceLayout
    target: SeriesTargets
    item: int


class SeriesLoader:
    """Batches of the given series of `data`, one series each: in a seeded order, cut and augmented when
    training; whole and in their order otherwise."""

    def __init__(self, data: LocatorData, items: list[int], cfg: SeriesLoaderConfig, train: bool) -> None:
        self.data, self.items, self.cfg, self.train = data, items, cfg, train

    def __len__(self) -> int:
        return len(self.items) if not self.train else len(self.items[:self.cfg.limit])

    def epoch(self, epoch: int) -> Iterator[SeriesBatch]:
        """The series of `epoch`, each prepared on the device when it is asked for."""
        if not self.train:
            for item in self.items:
                yield self._whole(item)
            return
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(self.items)[:self.cfg.limit]
        for item in order:
            yield self._training(int(item), epoch)

    def _whole(self, item: int) -> SeriesBatch:
        series, device = self.data.series[item], self.cfg.device
        return SeriesBatch(model_input(self.data.images, series, self.cfg.image_size, device),
                           series.layout(device), self.data.targets[item], item)

    def _training(self, item: int, epoch: int) -> SeriesBatch:
        cfg = self.cfg
        series, target = self.data.series[item], self.data.targets[item]
        params = augment_params(cfg.seed, epoch, item)
        if len(series) > cfg.max_slices:
            start = int(params["window_start"] * (len(series) - cfg.max_slices + 1))
            series, target = window(series, target, start, cfg.max_slices)
        images = resize_input(series_input(self.data.images, series).to(cfg.device), cfg.image_size)
        uv = target.uv
        if cfg.augment:
            images, uv = augment(images, uv, params)
        inputs = normalise(images).contiguous(memory_format=torch.channels_last)
        return SeriesBatch(inputs, series.layout(cfg.device), SeriesTargets(target.position, uv), item)
