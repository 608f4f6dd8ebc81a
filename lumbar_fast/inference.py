"""Batched prediction from a run's checkpoint, with AMP and channels_last: validation, evaluate and predict
share it, so a number reported during training is the number evaluate reproduces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.models.classifier import architecture, create_classifier
from lumbar_fast.runfolder import BEST, RunFolder
from lumbar_fast.training.amp import amp_dtype_for


@torch.no_grad()
def predict_items(model: nn.Module, loader, amp_dtype: torch.dtype | None,
                  limit_batches: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities for every item of a validation-style loader: (item indices, (N, 3) float64)."""
    model.eval()
    items, probs = [], []
    for index, batch in enumerate(loader.epoch(0)):
        if limit_batches is not None and index >= limit_batches:
            break
        with torch.autocast(batch.images.device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            logits = model(batch.images)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        items.append(batch.items.cpu())
    if not items:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 3))
    return torch.cat(items).numpy(), torch.cat(probs).double().numpy()


@dataclass
class LoadedRun:
    """A trained model ready for prediction, with what its checkpoint says about its inputs."""

    model: nn.Module
    meta: dict[str, Any]  # model_name, pooling, windows, sequence, view, image_size, channels, mean, std, …
    device: torch.device
    amp_dtype: torch.dtype | None


def load_run(run_dir: str | Path, device: str = "auto", amp: str = "auto",
             checkpoint: str = BEST) -> LoadedRun:
    """The run's best (or named) checkpoint as an eval-mode channels_last model on `device`."""
    folder = RunFolder.open_existing(Path(run_dir))
    target = resolve_device(device)
    state = folder.load_checkpoint(checkpoint)
    model = create_classifier(**architecture(state), pretrained=False)
    model.load_state_dict(state.pop("model"))
    model = model.to(device=target, memory_format=torch.channels_last).eval()
    return LoadedRun(model, state, target, amp_dtype_for(amp, target))
