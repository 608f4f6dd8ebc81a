"""What the learning tests share: a run of the default recipe with only the model and the machine chosen, its
validation loss beside the prior's and the best possible (the real-difficulty phantom's answer key), and
phantom folders cut down to the one sequence a test trains."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from lumbar_fast import metrics, rsna
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.runs import train
from lumbar_fast.csvfile import read_csv
from lumbar_fast.phantom.answer_key import (
    ANSWER_KEY_CSV,
    PROBABILITY_COLUMNS,
    find_answer_key,
)
from lumbar_fast.runfolder import PREDICTIONS, RunFolder


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


def best_record(run_dir: Path) -> dict:
    """The metrics record of the run's best epoch (its best.pt and val_predictions.csv)."""
    return [record for record in RunFolder(run_dir).read_metrics() if record["best"]][-1]


def best_possible_loss(items: pd.DataFrame, data: Path) -> float:
    """The weighted log loss of the answer key's best prediction on labelled items (study_id, condition,
    level, severity) of the real-difficulty phantom folder `data`: what no model beats on average."""
    row_ids = [rsna.row_id(*row) for row in items[["study_id", "condition", "level"]].itertuples(index=False)]
    key = read_csv(find_answer_key(data / "train.csv"), ANSWER_KEY_CSV, "answer key").set_index("row_id")
    p = key.loc[row_ids, list(PROBABILITY_COLUMNS)].to_numpy()
    return metrics.weighted_log_loss(items["severity"].to_numpy(), metrics.metric_optimal(p))


def gap_closed(loss: float, prior: float, best: float) -> float:
    """The share of the prior → best possible gap a loss closes: 0 at the prior, 1 at the best."""
    return (prior - loss) / (prior - best)


def validation_gap(run_dir: Path, data: Path) -> dict[str, float]:
    """The run's weighted log loss on its validation items beside the training prior's and the best
    possible's (`best_possible_loss` of the same items), and the share of the gap between them it closes."""
    predictions = pd.read_csv(run_dir / PREDICTIONS)
    model = metrics.weighted_log_loss(predictions["severity"].to_numpy(),
                                      predictions[list(PROBABILITY_COLUMNS)].to_numpy())
    best = best_possible_loss(predictions, data)
    prior = best_record(run_dir)["val_prior_weighted_log_loss"]
    return {"model": model, "prior": prior, "best": best, "closed": gap_closed(model, prior, best),
            "ratio": model / best}
