"""What the learning tests share: a run of the default recipe with only the model and the machine chosen, and
phantom folders cut down to the one sequence a test trains."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.runs import train


def default_run(cache: Path, run_dir: Path, sequence: str, **changes) -> Path:
    """A run of the default recipe, only the model (tiny, random init) and the machine chosen."""
    settings = dict(sequence=sequence, cache=str(cache), run_dir=str(run_dir), model="test_efficientnet",
                    pretrained=False, folds=3, loader="torch", workers=1, device="cpu", seed=5,
                    progress=False)
    return train(TrainConfig(**{**settings, **changes}))


def sagittal_t1_only(data: Path, root: Path) -> Path:
    """A linked copy of the phantom folder `data` at `root` whose series list names its Sagittal T1 series
    alone: ingest reads a quarter of the files for the tests that train sag_t1 only."""
    shutil.copytree(data, root, copy_function=os.link)
    descriptions = root / "train_series_descriptions.csv"
    lines = descriptions.read_text().splitlines(keepends=True)
    kept = [line for line in lines[1:] if line.rstrip().endswith(",Sagittal T1")]
    descriptions.unlink()  # a new file: the linked one is data's
    descriptions.write_text(lines[0] + "".join(kept))
    return root
