"""The level locator's network: a timm backbone with a heatmap decoder (one channel per target) and a
stack-aware slice head (docs/locator.md).

For each target (condition × level, e.g. "left foramen at L4/L5") it scores every slice of a series — from
the slice's pooled features and its place in the stack, mixed along the stack by a 1-D convolution (the local
shape of a disc) and a bidirectional GRU over the whole series (which disc it is: counting from the sacrum or
the top), plus a positional prior (the log-density of a Gaussian over the slice's offset in mm from the
series' centre, fitted per target on the training series: it tells a left foramen from its mirror image on
the right) — and draws a heatmap of where on the slice it lies (a light FPN decoder on the backbone's
features, stride 2).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.models.backbone import create_model

#: the positional prior's spread never falls below this (mm): about a slice gap, so it never overrules the
#: images between neighbouring slices, only between far-apart ones
PRIOR_MIN_STD_MM = 5.0
#: the spread of a target without enough labels to fit one (mm): the prior is flat across any series
PRIOR_FLAT_STD_MM = 1e4


class SliceLayout(NamedTuple):
    """A series' slice geometry as the model reads it: relative place within each stack (N,), offset in mm
    from the series' centre (N,) and the stacks as runs of rows."""

    rel_pos: torch.Tensor
    offset_mm: torch.Tensor
    segments: list[slice]


class Locator(nn.Module):
    """A timm backbone with a heatmap decoder (one channel per target) and a stack-aware slice head."""

    def __init__(self, model_name: str, num_targets: int, pretrained: bool = False, width: int = 32) -> None:
        super().__init__()
        try:
            self.backbone = create_model(model_name, in_chans=3, pretrained=pretrained, features_only=True,
                                         out_indices=(0, 1, 2, 3, 4))
        except RuntimeError as exc:  # timm: a model without a feature-extraction mode
            raise LumbarFastError(f"timm model {model_name!r} has no feature maps for a locator: "
                                  f"{exc}") from None
        channels = self.backbone.feature_info.channels()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.heatmap_head = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True),
                                          nn.Conv2d(width, num_targets, 1))
        self.slice_embed = nn.Sequential(nn.Linear(channels[-1] + width, width), nn.ReLU(inplace=True))
        self.slice_local = nn.Sequential(nn.Conv1d(width + 1, width, 5, padding=2), nn.ReLU(inplace=True))
        self.slice_context = nn.GRU(width + 1, width, batch_first=True, bidirectional=True)
        self.slice_score = nn.Linear(3 * width, num_targets)

        self.register_buffer("prior_mean", torch.zeros(num_targets))
        self.register_buffer("prior_std", torch.full((num_targets,), PRIOR_FLAT_STD_MM))

    def set_position_prior(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Fix the positional prior: per target, the mean and spread (mm) of its offset from the series'
        centre (`fit_position_prior`)."""
        self.prior_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.prior_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, images: torch.Tensor, layout: SliceLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """images (N, 3, H, W) of one series' slices → heatmaps (N, K, H/2, W/2) and slice logits (N, K)."""
        features = self.backbone(images)
        top = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1]), strict=True):
            top = lateral(feature) + F.interpolate(top, size=feature.shape[-2:], mode="nearest")
        heatmaps = self.heatmap_head(top)
        pooled = torch.cat([features[-1].mean(dim=(2, 3)), top.mean(dim=(2, 3))], dim=1)
        return heatmaps, self.score_slices(pooled, layout)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, layout: SliceLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` without gradients, its outputs as float32 on the CPU (for decoding and losses)."""
        heatmaps, slice_logits = self(images, layout)
        return heatmaps.float().cpu(), slice_logits.float().cpu()

    def score_slices(self, pooled: torch.Tensor, layout: SliceLayout) -> torch.Tensor:
        """Per-slice pooled features (N, C) → slice logits (N, K): local mixing within each stack, then a
        GRU along the whole series (stacks in their order), plus the positional prior; run in float32 (it is
        tiny and AMP-unfriendly)."""
        with torch.autocast(pooled.device.type, enabled=False):
            embedded = torch.cat([self.slice_embed(pooled.float()), layout.rel_pos[:, None].float()], dim=1)
            local = torch.cat([self.slice_local(embedded[seg].T[None])[0].T for seg in layout.segments])
            context, _ = self.slice_context(torch.cat([local, embedded[:, -1:]], dim=1)[None])
            logits = self.slice_score(torch.cat([local, context[0]], dim=1))
            deviation = (layout.offset_mm[:, None].float() - self.prior_mean) / self.prior_std
            return logits - 0.5 * deviation**2
