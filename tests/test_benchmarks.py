"""The benchmarks at a tiny size, so that they do not rot: each prints its table and writes its JSON.

The train and loader benchmarks run through benchmarks/gpu_check.sh --dry-run, which checks that script too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import common, ingest, multislice, recipe
from lumbar_fast import rsna

REPO = Path(__file__).resolve().parents[1]
STUDIES = "2"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One work folder for the module: the synth data and its cache are made once and reused."""
    return tmp_path_factory.mktemp("bench")


def read_record(path: Path, benchmark: str) -> dict:
    """The JSON record, checked for the fields every benchmark writes."""
    record = json.loads(path.read_text())
    assert record["benchmark"] == benchmark
    assert {"date", "hardware", "versions", "args", "results", "table"} <= set(record)
    assert record["hardware"]["logical_cpus"] >= 1
    assert record["versions"]["torch"] and record["versions"]["zarr"] != "missing"
    return record


def test_interleaving_and_spread():
    calls = []
    runs = common.interleaved({"a": lambda: calls.append("a") or {"x": 1.0},
                               "b": lambda: calls.append("b") or {"x": 3.0}}, repeats=3, log=lambda _: None)
    assert calls == ["a", "b"] * 3
    assert common.summarise(runs)["b"]["x"] == {"median": 3.0, "min": 3.0, "max": 3.0, "spread_pct": 0.0}
    stats = common.spread([1.0, 2.0, 4.0])
    assert stats["median"] == 2.0 and stats["spread_pct"] == pytest.approx(75.0)
    assert common.markdown_table(["a", "b"], [[1, 2]]).splitlines()[2] == "| 1 | 2 |"


def test_run_measured_reports_the_child_peak_memory():
    allocate = "import numpy; a = numpy.ones(64 * 2**20, numpy.uint8); print(a.sum())"
    measured = common.run_measured([sys.executable, "-c", allocate])
    baseline = common.run_measured([sys.executable, "-c", "import numpy"])
    assert measured["peak_rss_mib"] > baseline["peak_rss_mib"] + 60 and measured["seconds"] > 0
    assert baseline["peak_rss_mib"] < 100  # not this (large) test process's own high-water mark
    with pytest.raises(RuntimeError, match="failed"):
        common.run_measured([sys.executable, "-c", "raise SystemExit(3)"])


def test_ingest_benchmark(workdir, capsys):
    out = workdir / "ingest.json"
    ingest.main(["--workdir", str(workdir), "--studies", STUDIES, "--workers", "1", "--repeats", "1",
                 "--json", str(out)])
    record = read_record(out, "ingest")
    summary = record["results"]["summary"]
    assert set(summary) == {"zarr-w1", "hdf5-w1", "bare-w1"}
    assert summary["zarr-w1"]["cache_mib"]["median"] > 0 and summary["bare-w1"]["slices_s"]["median"] > 0
    assert summary["zarr-w1"]["peak_disk_ratio"]["median"] >= 1.0
    assert "ingest zarr / bare time, 1 worker(s)" in capsys.readouterr().out


def test_gpu_check_dry_run(workdir, tmp_path):
    """The GPU-machine script itself, on CPU at a tiny size: both benchmarks run, the tables come last."""
    env = {**os.environ, "PYTHON": sys.executable, "DRY_WORKDIR": str(workdir), "DRY_STUDIES": STUDIES,
           "DRY_REPEATS": "1", "OUT": str(tmp_path)}
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env,
                            capture_output=True, text=True, timeout=600)
    logs = "".join(path.read_text()[-2000:] for path in tmp_path.glob("*.log"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs
    tail = result.stdout[result.stdout.index("# GPU suite results"):]
    assert "## train" in tail and "of ceiling" in tail
    assert "## loader" in tail and "| dali / seed |" in tail

    train_results = read_record(tmp_path / "train.json", "train")["results"]
    assert set(train_results["throughput"]["summary"]) == {"ceiling-eager", "dali-eager", "torch-eager"}
    assert len(train_results["full_epoch"]["summary"]) == 2
    multi_slice = read_record(tmp_path / "train-9.json", "train")
    assert multi_slice["args"]["slices"] == 9 and multi_slice["results"]["full_epoch"] is None
    assert set(multi_slice["results"]["throughput"]["summary"]) == set(train_results["throughput"]["summary"])
    loader_summary = read_record(tmp_path / "loader.json", "loader")["results"]["summary"]
    assert set(loader_summary) == {"dali", "torch", "seed", "png"}
    assert all(np.isfinite(stats["steady_img_s"]["median"]) for stats in loader_summary.values())


def test_recipe_study(workdir, capsys):
    """The recipe study at a tiny size: every requested cell trains and is judged on the held-out test split;
    the variant that changes the crops applies to ax_t2 alone."""
    out = workdir / "recipe.json"
    recipe.main(["--workdir", str(workdir), "--studies", "6", "--test-studies", "3", "--image-size", "64",
                 "--size", "32", "--epochs", "1", "--pairs", "401:1", "--sequences", "sag_t2,ax_t2",
                 "--variants", "default;seed recipe;crops without canonical side", "--batch-size", "8",
                 "--json", str(out)])
    record = read_record(out, "recipe")
    cells = record["results"]["cells"]
    assert set(cells["sag_t2"]) == {"default", "seed recipe"}
    assert set(cells["ax_t2"]) == {"default", "seed recipe", "crops without canonical side"}
    runs = record["results"]["runs"]
    assert len(runs) == 5 and all(run["judged_on"] == "held-out test split" for run in runs)
    assert all(sum(run["support"]) > 0 and 0 <= run["balanced_accuracy"] <= 1 for run in runs)
    assert "| crops without canonical side |  |  |" in capsys.readouterr().out


def test_multislice_study(workdir, synth_data, synth_cache, tmp_path, capsys):
    """The multi-slice study at a tiny size, with tiny locators: every variant trains per seed and is judged
    at the labelled, slice-shifted and located points of the held-out test split."""
    from lumbar_fast.locator.config import LocatorConfig
    from lumbar_fast.locator.runs import train_locator

    for sequence in rsna.SEQUENCES:
        train_locator(LocatorConfig(sequence=sequence, cache=str(synth_cache),
                                    run_dir=str(tmp_path / sequence), model="test_efficientnet",
                                    pretrained=False, image_size=64, width=16, epochs=1, limit_series=3,
                                    max_slices=8, device="cpu", progress=False))
    out = workdir / "multislice.json"
    multislice.main(["--workdir", str(workdir), "--data", str(synth_data), "--locators", str(tmp_path),
                     "--locator-size", "64", "--size", "32", "--seeds", "1", "--n-boot", "5", "--epochs", "1",
                     "--variants", "3 slices (default);5 slices, attention", "--json", str(out)])
    results = read_record(out, "multislice")["results"]["results"]
    assert [result["variant"] for result in results] == ["3 slices (default)", "5 slices, attention"]
    for result in results:
        assert set(result["intervals"]) == {"labelled", "slice -2", "slice -1", "slice +1", "slice +2",
                                            "located", "ratio"}
        assert all(np.isfinite(result["summary"][name]["score"]["mean"]) for name in ("labelled", "located"))
    assert "| 5 slices, attention |" in capsys.readouterr().out
    multislice.main(["--workdir", str(workdir), "--data", str(synth_data), "--locators", str(tmp_path),
                     "--size", "32", "--speed-only", "--speed-steps", "1", "--variants",
                     "9 slices, attention", "--json", str(out)])
    (timed,) = read_record(out, "multislice")["results"]["speed"]
    assert timed["windows"] == 7 and timed["speed"]["train_images_per_s"] > 0
    assert timed["speed"]["peak_memory_mb"] > 0
