"""The locator's losses on one series: cross-entropies of its heatmaps against a Gaussian at each labelled
point, and of its slice scores against a Gaussian over the neighbouring slices of the labelled one."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lumbar_fast.locator.targets import SeriesTargets

#: heatmap width of the target Gaussian, in heatmap cells
HEATMAP_SIGMA = 1.0
#: width of the slice target (a Gaussian over neighbouring slices), in slices
SLICE_SIGMA = 0.6


def gaussian_heatmap(uv: torch.Tensor, height: int, width: int, sigma: float = HEATMAP_SIGMA) -> torch.Tensor:
    """(M, 2) normalised points → (M, H·W) target distributions: a Gaussian at each point, summing to 1."""
    ys = (torch.arange(height, dtype=uv.dtype) + 0.5) / height
    xs = (torch.arange(width, dtype=uv.dtype) + 0.5) / width
    dx = (xs[None, None, :] - uv[:, 0, None, None]) * width
    dy = (ys[None, :, None] - uv[:, 1, None, None]) * height
    weights = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2)).reshape(len(uv), -1)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)


def slice_distribution(position: int, length: int, sigma: float = SLICE_SIGMA) -> torch.Tensor:
    """A target distribution over a series' slices centred on `position`."""
    offsets = torch.arange(length, dtype=torch.float32) - position
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def series_loss(heatmaps: torch.Tensor, slice_logits: torch.Tensor,
                target: SeriesTargets) -> tuple[torch.Tensor, torch.Tensor]:
    """(heatmap loss, slice loss) of one series: cross-entropies against the Gaussian targets. A point that
    the augmentation moved out of the image has no heatmap target (it would pile onto the border cells),
    but keeps its slice target."""
    present = np.flatnonzero(target.present)
    zero = heatmaps.sum() * 0.0
    if len(present) == 0:
        return zero, zero
    device = heatmaps.device
    k = torch.from_numpy(present).to(device)
    positions = target.position[present]
    height, width = heatmaps.shape[-2:]
    seen = np.flatnonzero(((target.uv[present] >= 0) & (target.uv[present] <= 1)).all(axis=1))
    heatmap_loss = zero
    if len(seen):
        rows, targets = (torch.from_numpy(index).to(device) for index in (positions[seen], present[seen]))
        logits = heatmaps[rows, targets].reshape(len(seen), -1)
        wanted = gaussian_heatmap(torch.from_numpy(target.uv[present[seen]]).float(), height, width)
        heatmap_loss = -(wanted.to(device) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    log_p = F.log_softmax(slice_logits[:, k], dim=0)  # (N, M): softmax over the series' slices
    wanted_slices = torch.stack([slice_distribution(int(p), len(slice_logits)) for p in positions], dim=1)
    wanted_slices = wanted_slices.to(device)
    slice_loss = -(wanted_slices * log_p).sum(dim=0).mean()
    return heatmap_loss, slice_loss
