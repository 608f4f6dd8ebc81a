"""The multi-slice classifier: one 2-D timm backbone shared by every window of three neighbouring slices of an
N-slice crop, a pooling over the windows, then the classification head (the RSNA 2024 4th–9th place design).

A crop of N slices (ingest --channels N) holds the labelled slice in its middle channel. Windows of three
slices start every `stride` slices; `valid` padding keeps the windows inside the crop (N-2 windows at stride
1), `edge` repeats the first and last slice once more (N windows at stride 1, one centred on each slice).
Each window passes the backbone as an RGB image normalised with ImageNet's statistics (on the device, here:
the loader delivers the N channels scaled to [0, 1]), so pretrained weights see what they were made for.

Poolings: `stem` is the plain timm model with N input channels (every slice mixed in the first convolution);
`attention` weights the windows' features by a learned score of their content (no position: the window that
shows the graded structure counts wherever it sits); `gru` runs a bidirectional GRU over the windows in
slice order before the same attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders import IMAGENET_MEAN, IMAGENET_STD
from lumbar_fast.models.backbone import create_model

POOLINGS = ("stem", "attention", "gru")
PADDINGS = ("valid", "edge")
WINDOW = 3  # slices per window: the backbone's RGB input


@dataclass(frozen=True)
class SliceWindows:
    """How an N-slice crop is cut into windows of three slices."""

    slices: int  # N: the crop's channels
    stride: int = 1
    padding: str = "valid"

    def check(self) -> None:
        """Refuse a crop and stride whose windows do not tile the crop symmetrically, in one line."""
        if self.padding not in PADDINGS:
            raise LumbarFastError(f"--window-padding must be one of {', '.join(PADDINGS)}")
        if self.stride < 1:
            raise LumbarFastError(f"--window-stride must be at least 1 (got {self.stride})")
        span = self.padded() - WINDOW
        if span < 0 or span % self.stride:
            raise LumbarFastError(
                f"windows of {WINDOW} slices at stride {self.stride} with {self.padding} padding do not "
                f"tile a {self.slices}-slice crop; use an odd --channels of at least 3 at ingest and a "
                f"stride that divides {max(span, 0)}")

    def padded(self) -> int:
        """Slices after padding."""
        return self.slices + (2 if self.padding == "edge" else 0)

    def count(self) -> int:
        """Windows per crop: the backbone passes per item."""
        return (self.padded() - WINDOW) // self.stride + 1


class AttentionPooling(nn.Module):
    """A softmax over the windows of a learned score of each window's features; their weighted mean."""

    def __init__(self, features: int, hidden: int = 256) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.features = features

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, W, D) window features -> (B, D)."""
        weights = torch.softmax(self.score(windows).squeeze(-1).float(), dim=1).to(windows.dtype)
        return torch.einsum("bw,bwd->bd", weights, windows)


class GRUPooling(nn.Module):
    """A bidirectional GRU over the windows in slice order, then attention over its outputs."""

    def __init__(self, features: int, hidden: int = 256) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True, bidirectional=True)
        self.attention = AttentionPooling(2 * hidden, hidden)
        self.features = 2 * hidden

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, W, D) window features -> (B, 2·hidden)."""
        sequence, _ = self.gru(windows)
        return self.attention(sequence)


class MultiSliceClassifier(nn.Module):
    """Shared backbone over the windows of an N-slice crop, pooled, then a linear head."""

    def __init__(self, backbone: nn.Module, windows: SliceWindows, pooling: str, num_classes: int) -> None:
        super().__init__()
        self.backbone, self.windows = backbone, windows
        self.pool = {"attention": AttentionPooling, "gru": GRUPooling}[pooling](feature_size(backbone))
        self.head = nn.Linear(self.pool.features, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD), persistent=False)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W) crops in [0, 1] -> (B, classes) logits."""
        return self.head(self.pool(self.window_features(crops)))

    def window_features(self, crops: torch.Tensor) -> torch.Tensor:
        """(B, N, H, W) -> (B, windows, D): every window through the backbone in one channels_last batch."""
        if self.windows.padding == "edge":
            crops = torch.cat([crops[:, :1], crops, crops[:, -1:]], dim=1)
        batch, _, height, width = crops.shape
        # unfold puts each window's three slices last: (B, W, H, W, 3), channels_last once flattened
        windows = crops.unfold(1, WINDOW, self.windows.stride)
        count = windows.shape[1]
        flat = windows.reshape(batch * count, height, width, WINDOW)
        flat = ((flat - self.mean.to(flat.dtype)) / self.std.to(flat.dtype)).permute(0, 3, 1, 2)
        return self.backbone(flat).reshape(batch, count, -1)


def feature_size(backbone: nn.Module) -> int:
    """The width of a headless timm model's output: `head_hidden_size` where a model has a layer after its
    pooled features (mobilenetv3's conv_head: 576 → 1024), else `num_features`."""
    return getattr(backbone, "head_hidden_size", None) or backbone.num_features


def uses_windows(pooling: str) -> bool:
    """Whether a pooling cuts the crop into windows (and so normalises per window, on the device)."""
    return pooling != "stem"


def create_classifier(name: str, channels: int, pooling: str = "stem", stride: int = 1,
                      padding: str = "valid", num_classes: int = 3, pretrained: bool = True,
                      weights: str | Path | None = None) -> nn.Module:
    """The classifier for crops of `channels` slices: a plain timm model (`stem`) or a MultiSliceClassifier
    whose backbone takes the timm weights (hub or `weights` file)."""
    if pooling not in POOLINGS:
        raise LumbarFastError(f"--pooling must be one of {', '.join(POOLINGS)}")
    if not uses_windows(pooling):
        return create_model(name, pretrained=pretrained, weights=weights, in_chans=channels,
                            num_classes=num_classes)
    windows = SliceWindows(channels, stride, padding)
    windows.check()
    backbone = create_model(name, pretrained=pretrained, weights=weights, in_chans=WINDOW,
                            num_classes=num_classes)
    backbone.reset_classifier(0)  # pooled features out; the head comes after the window pooling
    return MultiSliceClassifier(backbone, windows, pooling, num_classes)


def architecture(meta: dict[str, Any]) -> dict[str, Any]:
    """create_classifier's arguments from a checkpoint's meta."""
    return {"name": meta["model_name"], "channels": meta["channels"], "pooling": meta["pooling"],
            "stride": meta["window_stride"], "padding": meta["window_padding"],
            "num_classes": meta["num_classes"]}
