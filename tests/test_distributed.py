"""Multi-process training: the collectives of lumbar_fast.distributed in 2 gloo processes, and a real
`torchrun --nproc-per-node 2 -m lumbar_fast train` on the CPU checked against a single-process evaluation."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from lumbar_fast import distributed
from lumbar_fast.cache import open_cache
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.inference import load_run
from lumbar_fast.loaders import build_loader
from lumbar_fast.runfolder import BEST, LAST, PREDICTIONS, SPLIT, RunFolder
from lumbar_fast.split import train_val_studies
from lumbar_fast.train import (
    ITEM_LOG_ENV,
    TrainConfig,
    build_items,
    class_frequencies,
    loader_config,
    split_items,
    validate,
)
from tests.distributed_worker import WORLD, collectives, refuse

BATCH = 4


def test_single_process_is_the_identity():
    assert not distributed.active() and distributed.is_main()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    rows = np.arange(3)
    assert distributed.all_gather_rows(rows)[0] is rows
    assert distributed.broadcast({"a": 1}) == {"a": 1}
    with distributed.process_group(torch.device("cpu")):  # not launched by torchrun: nothing to join
        assert not distributed.active()
    with pytest.raises(LumbarFastError, match="refused"):
        distributed.on_main(refuse)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_collectives_in_two_gloo_processes(tmp_path):
    """Exact-count gathers in rank order, rank 0's verdict on every rank although the ranks disagree, rank
    0's buffers everywhere, rank 0's error raised on both ranks, sums."""
    mp.spawn(collectives, args=(_free_port(), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (got["rank"], got["world_size"], got["main"]) == (rank, WORLD, rank == 0)
        assert got["items"] == [0, 1, 2, 3, 4]
        assert got["verdict"] == {"stop": False}
        assert got["running_mean"] == [0.0, 0.0]
        assert got["error"] == "refused on rank 0"
        assert got["sums"] == [2.0, 1.0]


# -- a real torchrun training run ------------------------------------------------
@pytest.fixture(scope="module")
def torchrun_run(synth_cache, tmp_path_factory):
    """2 epochs of `lumbar-fast train --nproc 2`, which re-runs itself as `torchrun --standalone
    --nproc-per-node 2 -m lumbar_fast train ...` (gloo, CPU, torch loader, tiny model), with the loop's item
    log on: (runs folder, item log folder, the command's output)."""
    root = tmp_path_factory.mktemp("ddp")
    runs, item_log = root / "runs", root / "items"
    item_log.mkdir()
    command = [sys.executable, "-m", "lumbar_fast", "train", "--nproc", str(WORLD), "--sequence", "sag_t2",
               "--cache", str(synth_cache), "--out", str(runs), "--model", "test_efficientnet",
               "--no-pretrained", "--epochs", "2", "--batch-size", str(BATCH), "--folds", "3",
               "--loader", "torch", "--device", "cpu", "--workers", "1", "--no-progress"]
    env = {**os.environ, ITEM_LOG_ENV: str(item_log), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return runs, item_log, result.stdout


def run_items(run_dir):
    """The run's training and validation items, rebuilt from its config and split by the loop's functions."""
    run = RunFolder.open_existing(run_dir)
    config = TrainConfig(**run.read_config())
    items = build_items(open_cache(config.cache), config, run)
    split = pd.read_csv(run.file(SPLIT))
    return config, *split_items(items, *train_val_studies(split, config.fold))


def test_torchrun_writes_one_run_folder(torchrun_run):
    runs, _, stdout = torchrun_run
    folders = list(runs.iterdir())
    assert len(folders) == 1, folders
    run = RunFolder(folders[0])
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    config = run.read_config()  # --nproc passed every option on
    assert (config["epochs"], config["batch_size"], config["loader"], config["pretrained"]) == (
        2, BATCH, "torch", False)
    for name in ("config.json", "split.csv", "metrics.csv", "curves.png", BEST, LAST, PREDICTIONS):
        assert (folders[0] / name).is_file(), name
    assert not list(folders[0].glob(".*tmp*"))
    assert stdout.count("epoch 2:") == stdout.count("run folder:") == 1  # rank 0 alone prints


def test_ranks_train_on_disjoint_equal_shares(torchrun_run):
    runs, item_log, _ = torchrun_run
    _, train_items, _ = run_items(next(runs.iterdir()))
    n_items = len(train_items.labels)
    logs = [[json.loads(line) for line in (item_log / f"items-rank{r}.jsonl").read_text().splitlines()]
            for r in range(WORLD)]
    records = RunFolder(next(runs.iterdir())).read_metrics()
    dropped = []
    for epoch in range(2):
        shares = [log[epoch]["items"] for log in logs]
        assert all(log[epoch]["epoch"] == epoch and log[epoch]["world_size"] == WORLD for log in logs)
        assert len(shares[0]) == len(shares[1]) > 0 and len(shares[0]) % BATCH == 0
        assert not set(shares[0]) & set(shares[1])
        seen = set(shares[0]) | set(shares[1])
        assert len(seen) == len(shares[0]) + len(shares[1]) == records[epoch]["train_images"]
        assert seen <= set(range(n_items)) and n_items - len(seen) < WORLD * BATCH
        dropped.append(set(range(n_items)) - seen)
    assert dropped[0] and dropped[0] != dropped[1]  # the remainder changes from epoch to epoch


def test_validation_equals_a_single_process_evaluation(torchrun_run):
    """The metrics each epoch reports (every validation item once, over 2 ranks) equal those of one process
    validating the saved checkpoint; best.pt's predictions equal val_predictions.csv."""
    runs, _, _ = torchrun_run
    run_dir = next(runs.iterdir())
    config, train_items, val_items = run_items(run_dir)
    prior = class_frequencies(train_items.labels)
    records = RunFolder(run_dir).read_metrics()
    for checkpoint in (LAST, BEST):
        loaded = load_run(run_dir, device="cpu", amp="none", checkpoint=checkpoint)
        cfg = loader_config(config, loaded.device, None)
        loader = build_loader("torch", val_items.images_path, val_items.rows, val_items.labels, cfg,
                              train=False)
        metrics, predictions = validate(loaded.model, loader, val_items, prior, None, None)
        reported = records[loaded.meta["epoch"] - 1]
        assert metrics["val_n"] == reported["val_n"] == len(val_items.labels)
        for key, value in metrics.items():  # None in a record: a ratio without support (nan here)
            np.testing.assert_allclose(np.array(reported[key], float), np.array(value, float), rtol=1e-5,
                                       atol=1e-6, equal_nan=True, err_msg=key)
    written = pd.read_csv(run_dir / PREDICTIONS)
    assert len(written) == len(predictions)
    columns = [c for c in written.columns if c.startswith("p_")]
    assert np.allclose(written[columns].to_numpy(), predictions[columns].to_numpy(), atol=1e-6)
