"""predict: submission rows (crops joined, prior filling), flip TTA, run checks, and the command end to end on
runs trained on the phantom (the round trip predict → score = evaluate is in test_evaluate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lumbar_fast import metrics, rsna
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.predict import (
    LOCATION,
    PROBABILITY_COLUMNS,
    FlipAverage,
    fill_rows,
    location_probabilities,
    read_runs,
)
from lumbar_fast.runfolder import BEST, RunFolder

PRIORS = {"sag_t1": np.array([0.7, 0.2, 0.1]), "sag_t2": np.array([0.8, 0.1, 0.1]),
          "ax_t2": np.array([0.6, 0.3, 0.1])}


def solution_of(study_ids: list[int]) -> pd.DataFrame:
    """labels_to_rows of studies whose labels are all Normal/Mild."""
    labels = pd.DataFrame({"study_id": study_ids, **{column: 0 for column in rsna.LABEL_COLUMNS}})
    return metrics.labels_to_rows(labels)


def random_located(rows: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Random probabilities for the given rows' locations."""
    probs = np.random.default_rng(seed).dirichlet([1, 1, 1], len(rows))
    columns = dict(zip(PROBABILITY_COLUMNS, probs.T, strict=True))
    return rows[LOCATION].reset_index(drop=True).assign(**columns)


def test_fill_rows_joins_located_probabilities_and_fills_the_prior_only_when_allowed():
    solution = solution_of([11, 22])
    no_crop = (solution["study_id"] == 22) & (solution["condition"] == "spinal_canal_stenosis")
    located = random_located(solution[~no_crop])
    with pytest.raises(LumbarFastError, match=r"1 studies lack crops for 5 rows \(first: study 22, "
                                              r"spinal_canal_stenosis l1_l2\).*--allow-prior"):
        fill_rows(solution, located, PRIORS, allow_prior=False)
    result = fill_rows(solution, located, PRIORS, allow_prior=True)
    assert result.filled.tolist() == no_crop.tolist()
    assert np.allclose(result.probabilities[no_crop.to_numpy()], PRIORS["sag_t2"])
    kept = result.rows[~result.filled].merge(located, on=LOCATION, suffixes=("", "_located"))
    assert np.allclose(kept[list(PROBABILITY_COLUMNS)].to_numpy(),
                       kept[[f"{c}_located" for c in PROBABILITY_COLUMNS]].to_numpy())
    submission = result.submission()
    metrics.check_submission(submission)
    assert submission["row_id"].tolist() == solution["row_id"].tolist()


def test_location_probabilities_average_the_crops_of_one_location():
    solution = solution_of([5])
    crops = pd.concat([random_located(solution, seed=1), random_located(solution.iloc[:2], seed=2)])
    located = location_probabilities(crops)
    assert len(located) == 25
    first = located.merge(solution.iloc[:1][LOCATION])[list(PROBABILITY_COLUMNS)].to_numpy()
    expected = crops.merge(solution.iloc[:1][LOCATION])[list(PROBABILITY_COLUMNS)].mean().to_numpy()
    assert np.allclose(first, expected)


def test_flip_average_is_the_mean_of_image_and_mirror_probabilities():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(3)).eval()
    images = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = (model(images).softmax(1) + model(images.flip(-1)).softmax(1)) / 2
        averaged = FlipAverage(model)(images).softmax(1)
        plain = model(images).softmax(1)
    assert torch.allclose(averaged, expected, atol=1e-6)
    assert not torch.allclose(averaged, plain, atol=1e-3)  # the mirror does count


def fake_run(path: Path, sequence: str = "sag_t2", fold: int = 0, view: str = "level",
             best: bool = True) -> Path:
    """A run folder with the files read_runs looks at (config, metrics, best.pt), no model."""
    run = RunFolder(path)
    run.write_config({"sequence": sequence, "fold": fold, "folds": 3, "view": view, "cache": "c"})
    run.file("metrics.jsonl").write_text(json.dumps({"epoch": 1, "val_prior": [0.8, 0.1, 0.1]}) + "\n")
    if best:
        run.save_checkpoint(BEST, {})
    return path


def test_read_runs_refuses_bad_run_folders(tmp_path):
    good = fake_run(tmp_path / "good")
    (tmp_path / "empty").mkdir()
    cases = {
        "does not exist": [tmp_path / "nowhere"],
        "not a run folder": [tmp_path / "empty"],
        "has no best.pt": [fake_run(tmp_path / "unfinished", best=False)],
        "slice view": [fake_run(tmp_path / "slice", view="slice")],
        "both sag_t2 fold 0": [good, fake_run(tmp_path / "again")],
        "at least one": [],
    }
    for message, paths in cases.items():
        with pytest.raises(LumbarFastError, match=message):
            read_runs(paths)
    runs = read_runs([good, fake_run(tmp_path / "fold1", fold=1)])
    assert [(r.sequence, r.fold) for r in runs] == [("sag_t2", 0), ("sag_t2", 1)]
    assert np.allclose(runs[0].prior, [0.8, 0.1, 0.1])
