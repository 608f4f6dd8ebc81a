"""Per-item augmentation parameters as a pure function of (seed, epoch, item).

Both loaders (DALI and torch) draw their augmentation here, so they apply the same transform to the same
item in the same epoch, and a resumed run sees the augmentations an uninterrupted run would have seen.
Numpy only: DALI worker processes import this module.

Geometry (rotation, scale, shift, flips) is one 2×3 matrix per item in DALI's `warp_affine` convention: it
maps OUTPUT pixel coordinates to INPUT pixel coordinates, `(0, 0)` being the corner of the first pixel.
Intensity (brightness, contrast) is one gain and bias per item, folded into the normalisation.

Flips: a level crop carries one label for the structure at its centre, so flips keep the label valid, but
they change what the image shows. A horizontal flip mirrors anterior-posterior on a sagittal image (left-right
on an axial one); it is on by default. The 2.5D channels are neighbouring slices, and on sagittal crops the
slice axis runs along the patient's left-right: reversing it (`slice_flip`) turns a left foramen into a
mirror-image right one. It is off by default so that foraminal models see each side's true anatomy; turn it
on only for a side-agnostic experiment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the intensity left unchanged by a contrast change (mid-grey of uint8)
CONTRAST_CENTRE = 128.0

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_UINT64 = (1 << 64) - 1


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation; each draw is uniform in ±range (flips: probability)."""

    rotate_deg: float = 10.0  # rotation, degrees
    scale: float = 0.1  # zoom factor in [1 - scale, 1 + scale]
    shift: float = 0.0625  # translation, fraction of the image size, per axis
    brightness: float = 0.2  # intensity multiplier in [1 - brightness, 1 + brightness]
    contrast: float = 0.2  # contrast multiplier around CONTRAST_CENTRE
    hflip: float = 0.5  # probability of a horizontal (left-right in the image) flip
    vflip: float = 0.0  # probability of a vertical flip
    slice_flip: float = 0.0  # probability of reversing the slice (channel) order; see the module docstring


@dataclass(frozen=True)
class AugmentParams:
    """The augmentation of a batch of items, index i ↔ item i."""

    matrix: np.ndarray  # (B, 2, 3) float32, output → input pixel coordinates
    gain: np.ndarray  # (B,) float32: pixel value x becomes gain·x + bias (uint8 units)
    bias: np.ndarray  # (B,) float32
    slice_flip: np.ndarray  # (B,) bool: reverse the channel order


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed 64-bit hash of each uint64 element."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def item_uniforms(seed: int, epoch: int, items: np.ndarray, count: int) -> np.ndarray:
    """`count` uniform draws in [0, 1) per item, a pure function of (seed, epoch, item)."""
    key = _mix(_mix(np.array([seed & _UINT64], dtype=np.uint64)) ^ np.uint64(epoch & _UINT64))
    item_keys = _mix(key ^ np.asarray(items, dtype=np.int64).astype(np.uint64))
    draws = _mix(item_keys[:, None] + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
    return (draws >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def identity_params(n: int) -> AugmentParams:
    """No augmentation for `n` items: identity matrix, unit gain, zero bias, no flips."""
    matrix = np.zeros((n, 2, 3), dtype=np.float32)
    matrix[:, 0, 0] = matrix[:, 1, 1] = 1.0
    return AugmentParams(matrix, np.ones(n, np.float32), np.zeros(n, np.float32), np.zeros(n, bool))


def augment_params(cfg: AugmentConfig, seed: int, epoch: int, items: np.ndarray, size: int) -> AugmentParams:
    """The augmentation of `items` in `epoch` for images of `size`×`size` pixels."""
    u = item_uniforms(seed, epoch, items, 9)
    signed = 2.0 * u[:, :6] - 1.0  # uniform in [-1, 1)
    angle = np.deg2rad(cfg.rotate_deg) * signed[:, 0]
    zoom = 1.0 + cfg.scale * signed[:, 1]
    shift = cfg.shift * size * signed[:, 2:4]  # (B, 2): x, y in pixels
    brightness = 1.0 + cfg.brightness * signed[:, 4]
    contrast = 1.0 + cfg.contrast * signed[:, 5]
    flip_x = np.where(u[:, 6] < cfg.hflip, -1.0, 1.0)
    flip_y = np.where(u[:, 7] < cfg.vflip, -1.0, 1.0)
    return AugmentParams(
        matrix=_inverse_matrix(angle, zoom, shift, flip_x, flip_y, size),
        gain=(brightness * contrast).astype(np.float32),
        bias=(brightness * CONTRAST_CENTRE * (1.0 - contrast)).astype(np.float32),
        slice_flip=u[:, 8] < cfg.slice_flip,
    )


def _inverse_matrix(angle: np.ndarray, zoom: np.ndarray, shift: np.ndarray, flip_x: np.ndarray,
                    flip_y: np.ndarray, size: int) -> np.ndarray:
    """Output → input matrices of the forward transform `out = c + shift + zoom·R(angle)·F·(in - c)`."""
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    linear = np.empty((len(angle), 2, 2))
    linear[:, 0, 0], linear[:, 0, 1] = flip_x * cos, flip_x * sin  # F · R(-angle) / zoom
    linear[:, 1, 0], linear[:, 1, 1] = -flip_y * sin, flip_y * cos
    centre = np.full(2, size / 2.0)
    offset = centre - np.einsum("bij,bj->bi", linear, centre + shift)
    return np.concatenate([linear, offset[:, :, None]], axis=2).astype(np.float32)


def normalisation(params: AugmentParams, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-item, per-channel (scale, shift), (B, C) float32, so that normalised = scale·pixel + shift.

    Folds the intensity augmentation into the mean/std normalisation (`mean`, `std` in uint8 units):
    (gain·x + bias - mean) / std.
    """
    scale = params.gain[:, None] / std[None, :]
    shift = (params.bias[:, None] - mean[None, :]) / std[None, :]
    return scale.astype(np.float32), shift.astype(np.float32)
