"""What the learning tests share: a run of the default recipe with only the model and the machine chosen."""

from __future__ import annotations

from pathlib import Path

from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.runs import train


def default_run(cache: Path, run_dir: Path, sequence: str, **changes) -> Path:
    """A run of the default recipe, only the model (tiny, random init) and the machine chosen."""
    settings = dict(sequence=sequence, cache=str(cache), run_dir=str(run_dir), model="test_efficientnet",
                    pretrained=False, folds=3, loader="torch", workers=1, device="cpu", seed=5,
                    progress=False)
    return train(TrainConfig(**{**settings, **changes}))
