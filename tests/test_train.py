"""Training: run folder, checkpoints, early stopping, items and controls, resume after a kill, error cases,
and the learning tests (the pipeline learns the phantom; the negative controls do not)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.runfolder import CHECKPOINT_FORMAT, RunFolder


# -- run folder ------------------------------------------------
def test_run_folder_refuses_to_overwrite_a_run(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    assert not run.path.exists()  # nothing is made before the first write
    run.write_config({"sequence": "sag_t2"})
    with pytest.raises(LumbarFastError, match="--resume"):
        RunFolder.create(run.path)
    assert RunFolder.open_existing(run.path).read_config() == {"sequence": "sag_t2"}
    config = json.loads((run.path / "config.json").read_text())
    assert config["environment"]["torch"] == torch.__version__
    assert "git_commit" in config["environment"]


def test_checkpoints_are_atomic_and_checked(tmp_path):
    run = RunFolder(tmp_path)
    run.save_checkpoint("last.pt", {"epoch": 2, "model": {"w": torch.ones(3)}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left
    state = run.load_checkpoint("last.pt")
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 2
    assert torch.equal(state["model"]["w"], torch.ones(3))
    with pytest.raises(LumbarFastError, match="no finished epoch"):
        run.load_checkpoint("best.pt")
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LumbarFastError, match="cannot read"):
        run.load_checkpoint("best.pt")
    torch.save({"epoch": 1}, tmp_path / "best.pt")
    with pytest.raises(LumbarFastError, match="not a lumbar-fast checkpoint"):
        run.load_checkpoint("best.pt")


def test_metrics_files_and_curves(tmp_path):
    run = RunFolder(tmp_path)
    records = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_weighted_log_loss": 0.9,
                "val_prior_weighted_log_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.6,
                "val_balanced_accuracy": 0.55, "val_majority_accuracy": 0.34,
                "val_recall": [0.1, 0.2, None], "val_confusion": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
               for e in (1, 2)]
    run.write_metrics(records)
    assert run.read_metrics() == records
    table = pd.read_csv(tmp_path / "metrics.csv")
    assert list(table["epoch"]) == [1, 2]
    assert list(table["val_confusion_2_0"]) == [7, 7] and list(table["val_recall_1"]) == [0.2, 0.2]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
