"""Test-time augmentation: a model's class probabilities averaged over an image and its horizontal mirror."""

from __future__ import annotations

import torch
from torch import nn


class FlipAverage(nn.Module):
    """Test-time augmentation: the class probabilities of an image and of its horizontal mirror, averaged.

    Returns their log, so that the softmax `predict_items` applies gives the average back. Used only for runs
    whose training augmentation flipped horizontally (`ClassifierRun.hflip`), so the model has seen such
    images: the defaults flip no sequence (an anterior-posterior mirror on sagittal crops; the undoing of
    axial crops' canonical side).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mirrored = images.flip(-1).contiguous(memory_format=torch.channels_last)
        probs = (self.model(images).float().softmax(dim=1) + self.model(mirrored).float().softmax(dim=1)) / 2
        return probs.log()
