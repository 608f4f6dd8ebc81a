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
    EarlyStopping,
    TrainConfig,
    build_items,
    class_frequencies,
    loader_config,
    split_items,
    update_early_stopping,
    validate,
)

WORLD = 2
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
        distributed.on_main(_refuse)


def _refuse() -> None:
    raise LumbarFastError("refused on rank 0")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _collectives(rank: int, port: int, results: dict) -> None:
    """One rank of the collectives test: what torchrun would set, then the helpers under a real gloo group."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")):
        items, = distributed.all_gather_rows(np.arange(rank * 3, rank * 3 + 3 - rank))  # 3 rows, then 2
        stopper = EarlyStopping("max", patience=1)
        update_early_stopping(stopper, 0.5, epoch=0)
        improved = update_early_stopping(stopper, 0.4 + 0.2 * rank, epoch=1)  # only rank 1 improved
        norm = torch.nn.BatchNorm1d(2)
        norm.running_mean.fill_(rank)
        distributed.broadcast_buffers(norm)
        try:
            distributed.on_main(_refuse)
            error = ""
        except LumbarFastError as exc:
            error = str(exc)
        sums = distributed.all_reduce_sum(torch.tensor([1.0, rank]))
        results[rank] = {"items": items.tolist(), "improved": improved, "stop": stopper.should_stop,
                         "running_mean": norm.running_mean.tolist(), "error": error, "sums": sums.tolist(),
                         "main": distributed.is_main()}


def test_collectives_in_two_gloo_processes():
    """Exact-count gathers in rank order, rank 0's early-stopping verdict on every rank (rank 1 alone saw an
    improvement, yet both stop), rank 0's buffers everywhere, rank 0's error raised on both ranks."""
    results = mp.Manager().dict()
    mp.spawn(_collectives, args=(_free_port(), results), nprocs=WORLD)
    for rank in range(WORLD):
        got = results[rank]
        assert got["items"] == [0, 1, 2, 3, 4]
        assert got["improved"] is False and got["stop"] is True
        assert got["running_mean"] == [0.0, 0.0]
        assert got["error"] == "refused on rank 0"
        assert got["sums"] == [2.0, 1.0]
        assert got["main"] == (rank == 0)


# -- a real torchrun training run ------------------------------------------------
@pytest.fixture(scope="module")
def torchrun_run(synth_cache, tmp_path_factory):
    """2 epochs of `torchrun --nproc-per-node 2 -m lumbar_fast train` (gloo, CPU, torch loader, tiny model),
    with the loop's item log on: (runs folder, item log folder, the command's output)."""
    root = tmp_path_factory.mktemp("ddp")
    runs, item_log = root / "runs", root / "items"
    item_log.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
               "-m", "lumbar_fast", "train", "--sequence", "sag_t2", "--cache", str(synth_cache),
               "--out", str(runs), "--model", "test_efficientnet", "--no-pretrained", "--epochs", "2",
               "--batch-size", str(BATCH), "--folds", "3", "--loader", "torch", "--device", "cpu",
               "--workers", "1", "--no-progress"]
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
    records = RunFolder(folders[0]).read_metrics()
    assert [r["epoch"] for r in records] == [1, 2]
    for name in ("config.json", "split.csv", "metrics.csv", "curves.png", BEST, LAST, PREDICTIONS):
        assert (folders[0] / name).is_file(), name
    assert not list(folders[0].glob(".*tmp*"))
    assert stdout.count("epoch 2:") == 1  # rank 0 alone prints


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
        loader = build_loader("torch", val_items.images_path, val_items.rows, val_items.labels, cfg, train=False)
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
