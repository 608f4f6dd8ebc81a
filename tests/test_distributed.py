"""Multi-process training: the collectives of lumbar_fast.distributed in 2 gloo processes, and a real
`torchrun --nproc-per-node 2 -m lumbar_fast train` on the CPU checked against a single-process evaluation."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp

from lumbar_fast import distributed, metrics
from lumbar_fast.cache import open_cache
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.items import build_items, split_items
from lumbar_fast.classifier.task import loader_config, validation_results
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.inference import load_run
from lumbar_fast.loaders import build_loader
from lumbar_fast.runfolder import BEST, LAST, PREDICTIONS, SPLIT, RunFolder
from lumbar_fast.split import train_val_studies
from lumbar_fast.testhooks import ITEM_LOG_ENV
from tests.distributed_worker import WORLD, collectives, crash, refuse

BATCH = 4
#: a tiny CPU run: random-weight test model, gloo, torch loader
TINY = ("--model", "test_efficientnet", "--no-pretrained", "--batch-size", str(BATCH), "--folds", "3",
        "--loader", "torch", "--device", "cpu", "--workers", "1", "--no-progress")


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
    with pytest.raises(OSError, match="No space left"):  # one process: the error as it is, traceback and all
        distributed.on_main(crash)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_collectives_in_two_gloo_processes(tmp_path):
    """Exact-count gathers in rank order, rank 0's verdict on every rank although the ranks disagree, rank
    0's buffers everywhere, rank 0's errors (a user error, an unexpected one) raised on both ranks, sums."""
    mp.spawn(collectives, args=(_free_port(), str(tmp_path)), nprocs=WORLD)
    for rank in range(WORLD):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert (got["rank"], got["world_size"], got["main"]) == (rank, WORLD, rank == 0)
        assert got["items"] == [0, 1, 2, 3, 4]
        assert got["verdict"] == {"stop": False}
        assert got["running_mean"] == [0.0, 0.0]
        assert got["errors"] == ["refused on rank 0", "rank 0 failed: OSError: No space left on device"]
        assert got["sums"] == [2.0, 1.0]


# -- a real torchrun training run ------------------------------------------------
def torchrun(item_log, *args: str) -> subprocess.CompletedProcess:
    """`lumbar-fast train --nproc 2 args...`, which re-runs itself as `torchrun --standalone
    --nproc-per-node 2 -m lumbar_fast train args...`, with the loop's item log in `item_log`."""
    item_log.mkdir()
    command = [sys.executable, "-m", "lumbar_fast", "train", "--nproc", str(WORLD), *args]
    env = {**os.environ, ITEM_LOG_ENV: str(item_log), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def launch(item_log, *args: str) -> str:
    """A torchrun training run that must succeed; its stdout."""
    result = torchrun(item_log, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def torchrun_run(synth_cache, tmp_path_factory):
    """2 epochs on 2 processes (gloo, CPU, torch loader, tiny model): (runs folder, item log, stdout)."""
    root = tmp_path_factory.mktemp("ddp")
    stdout = launch(root / "items", "--sequence", "sag_t2", "--cache", str(synth_cache), "--out",
                    str(root / "runs"), "--epochs", "2", *TINY)
    return root / "runs", root / "items", stdout


def test_an_unexpected_error_on_rank_0_ends_every_rank_with_one_line(synth_cache, tmp_path):
    """--run-dir inside a regular file: rank 0's first write fails with an OSError, not a LumbarFastError.
    Both ranks end with the same one line instead of rank 1 waiting for rank 0 forever; the file stays."""
    taken = tmp_path / "taken"
    taken.write_text("someone else's file")
    result = torchrun(tmp_path / "items", "--sequence", "sag_t2", "--cache", str(synth_cache), "--run-dir",
                      str(taken / "run"), "--epochs", "1", *TINY)
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1, result.stderr[-3000:]  # torchrun's code for a failed rank
    assert len(ours) == WORLD and len(set(ours)) == 1, result.stderr[-3000:]
    assert ours[0].startswith("error: rank 0 failed: NotADirectoryError")
    assert taken.read_text() == "someone else's file"


def run_items(run_dir):
    """The run's training and validation items, rebuilt from its config and split by the loop's functions."""
    run = RunFolder.open_existing(run_dir)
    config = TrainConfig(**run.read_config())
    items = build_items(open_cache(config.cache), config, run)
    split = pd.read_csv(run.file(SPLIT))
    return config, *split_items(items, *train_val_studies(split, config.fold))


def epoch_shares(item_log, epoch: int) -> list[list[int]]:
    """The training items each rank logged for `epoch`."""
    shares = []
    for rank in range(WORLD):
        lines = (item_log / f"items-rank{rank}.jsonl").read_text().splitlines()
        (record,) = [r for r in map(json.loads, lines) if r["epoch"] == epoch]
        assert (record["rank"], record["world_size"]) == (rank, WORLD)
        shares.append(record["items"])
    return shares


def dropped_items(shares: list[list[int]], n_items: int, train_images: int) -> set[int]:
    """Check one epoch's shares (equal, full batches, disjoint, fewer than world × batch items left out,
    as many as the epoch's record counts); returns the items left out."""
    assert len(shares[0]) == len(shares[1]) > 0 and len(shares[0]) % BATCH == 0
    assert not set(shares[0]) & set(shares[1])
    seen = set(shares[0]) | set(shares[1])
    assert len(seen) == len(shares[0]) + len(shares[1]) == train_images
    assert seen <= set(range(n_items)) and n_items - len(seen) < WORLD * BATCH
    return set(range(n_items)) - seen


def single_process_validation(run_dir, checkpoint: str):
    """One process validating `checkpoint` with the loop's own `validate`: (epoch, metrics, predictions)."""
    config, train_items, val_items = run_items(run_dir)
    loaded = load_run(run_dir, device="cpu", amp="none", checkpoint=checkpoint)
    cfg = loader_config(config, loaded.device, None, loaded.meta["channels"])
    loader = build_loader("torch", val_items.images_path, val_items.rows, val_items.labels, cfg, train=False)
    prior = metrics.class_prior(train_items.labels)
    return loaded.meta["epoch"], *validation_results(loaded.model, loader, val_items, prior, None, None)


def assert_same_metrics(reported: dict, metrics: dict) -> None:
    """Every metric of a record equals the recomputed one (None in a record: a ratio without support)."""
    for key, value in metrics.items():
        np.testing.assert_allclose(np.array(reported[key], float), np.array(value, float), rtol=1e-5,
                                   atol=1e-6, equal_nan=True, err_msg=key)


def test_torchrun_writes_one_run_folder(torchrun_run):
    runs, _, stdout = torchrun_run
    folders = list(runs.iterdir())
    assert len(folders) == 1, folders
    run = RunFolder(folders[0])
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]
    config = run.read_config()  # --nproc passed every option on
    assert (config["epochs"], config["batch_size"], config["loader"], config["pretrained"]) == (
        2, BATCH, "torch", False)
    for name in ("config.json", "split.csv", "metrics.csv", "curves.png", BEST, LAST, PREDICTIONS):
        assert (folders[0] / name).is_file(), name
    assert not list(folders[0].glob(".*tmp*"))
    assert stdout.count("epoch 2:") == stdout.count("run folder:") == 1  # rank 0 alone prints


def test_ranks_train_on_disjoint_equal_shares(torchrun_run):
    runs, item_log, _ = torchrun_run
    run_dir = next(runs.iterdir())
    n_items = len(run_items(run_dir)[1].labels)
    records = RunFolder(run_dir).read_metrics()
    dropped = [dropped_items(epoch_shares(item_log, e), n_items, records[e]["train_images"]) for e in (0, 1)]
    assert dropped[0] and dropped[0] != dropped[1]  # the remainder changes from epoch to epoch


def test_validation_equals_a_single_process_evaluation(torchrun_run):
    """The metrics each epoch reports (every validation item once, over 2 ranks) equal those of one process
    validating the saved checkpoint; best.pt's predictions equal val_predictions.csv."""
    run_dir = next(torchrun_run[0].iterdir())
    records = RunFolder(run_dir).read_metrics()
    for checkpoint in (LAST, BEST):
        epoch, metrics, predictions = single_process_validation(run_dir, checkpoint)
        assert metrics["val_n"] == records[epoch - 1]["val_n"] > 0
        assert_same_metrics(records[epoch - 1], metrics)
        if checkpoint == BEST:
            written = pd.read_csv(run_dir / PREDICTIONS)
            columns = [c for c in written.columns if c.startswith("p_")]
            assert len(written) == len(predictions)
            assert np.allclose(written[columns].to_numpy(), predictions[columns].to_numpy(), atol=1e-6)


def test_resume_under_torchrun_continues_on_every_rank(torchrun_run, tmp_path):
    """A copy of the 2-epoch run whose config asks for 3 epochs stands for a run stopped after epoch 2:
    `--resume` on 2 processes (each loads last.pt) adds epoch 3, split and validated as before."""
    run_dir = shutil.copytree(next(torchrun_run[0].iterdir()), tmp_path / "run")
    folder = RunFolder(run_dir)
    before = folder.read_metrics()
    folder.write_config({**folder.read_config(), "epochs": 3})
    stdout = launch(tmp_path / "items", "--resume", str(run_dir))
    records = folder.read_metrics()
    assert records[:2] == before and records[2]["epoch"] == 3
    assert stdout.count("epoch 3:") == 1 and "epoch 2:" not in stdout
    n_items = len(run_items(run_dir)[1].labels)
    dropped_items(epoch_shares(tmp_path / "items", 2), n_items, records[2]["train_images"])
    epoch, metrics, _ = single_process_validation(run_dir, LAST)
    assert epoch == 3
    assert_same_metrics(records[2], metrics)
