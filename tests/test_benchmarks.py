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
import pandas as pd
import pytest

from benchmarks import common, ingest, pipeline
from benchmarks import data as bench_data
from lumbar_fast.errors import LumbarFastError

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
                               "b": lambda: calls.append("b") or {"x": 3.0}}, repeats=3, log=lambda _: None,
                              before_each=lambda: calls.append("-"))
    assert calls == ["-", "a", "-", "b"] * 3
    assert 0 <= common.settle(idle_share=0.0, window=0.01) < 5  # an idle share of 0 is met at once
    assert common.summarise(runs)["b"]["x"] == {"median": 3.0, "min": 3.0, "max": 3.0, "spread_pct": 0.0,
                                                "n": 3}
    stats = common.spread([1.0, 2.0, 4.0])
    assert stats["median"] == 2.0 and stats["spread_pct"] == pytest.approx(75.0)
    assert common.cell(stats) == "2 ±75%" and common.cell(common.spread([5.0])) == "5"  # one run: no spread
    assert common.markdown_table(["a", "b"], [[1, 2]]).splitlines()[2] == "| 1 | 2 |"


def test_run_measured_reports_the_child_peak_memory():
    allocate = "import numpy; a = numpy.ones(64 * 2**20, numpy.uint8); print(a.sum())"
    measured = common.run_measured([sys.executable, "-c", allocate])
    baseline = common.run_measured([sys.executable, "-c", "import numpy"])
    assert measured["peak_rss_mib"] > baseline["peak_rss_mib"] + 60 and measured["seconds"] > 0
    assert baseline["peak_rss_mib"] < 100  # not this (large) test process's own high-water mark
    with pytest.raises(LumbarFastError, match=r"failed \(1\): the last line"):
        common.run_measured([sys.executable, "-c", "import sys; sys.exit('a traceback\\nthe last line')"])


def test_python_m_benchmarks_refuses_an_unknown_name_in_one_line():
    from benchmarks.__main__ import main

    for argv in ([], ["wobble", "--studies", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        message = str(exit_info.value.code)
        assert message.startswith("usage: python -m benchmarks {data,") and "\n" not in message


@pytest.mark.parametrize("argv, message", [
    (["ingest", "--workers", "0"], "argument --workers: 0 is less than 1"),
    (["ingest", "--repeats", "0"], "argument --repeats: 0 is less than 1"),
    (["ingest", "--formats", "parquet"], "unknown format(s) parquet"),
    (["ingest", "--data", "/nonexistent"], "--data /nonexistent is not a folder"),
    (["train", "--loaders", "bogus"], "unknown loader(s) bogus"),
    (["loader", "--studies", "x"], "argument --studies: 'x' is not an integer"),
])
def test_benchmark_arguments_are_refused_in_one_line(argv, message, capsys):
    """Before any data is made: a count of 0 or an unknown name ended in a traceback (or ran the rest)."""
    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_failed_benchmark_step_is_one_line(capsys):
    def failing() -> None:
        raise LumbarFastError("lumbar-fast synth … failed (2): error: no space left")

    with pytest.raises(SystemExit) as exit_info:
        common.run_main(failing)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: lumbar-fast synth … failed (2): error: no space left\n"

def test_ingest_benchmark(workdir, capsys):
    """On a given folder (as at RSNA scale): every contender measured, each cache read back, then removed."""
    out = workdir / "ingest.json"
    data = bench_data.synth_data(workdir, int(STUDIES), image_size=128, workers=1)  # the dry run reuses it
    ingest.main(["--workdir", str(workdir), "--data", str(data), "--workers", "1", "--repeats", "1",
                 "--json", str(out)])
    record = read_record(out, "ingest")
    summary = record["results"]["summary"]
    assert set(summary) == {"zarr-w1", "hdf5-w1", "bare-w1"}
    assert record["results"]["slices"] == len(list((data / "train_images").rglob("*.dcm")))
    assert summary["zarr-w1"]["cache_mib"]["median"] > 0 and summary["bare-w1"]["slices_s"]["median"] > 0
    assert summary["zarr-w1"]["peak_disk_ratio"]["median"] >= 1.0 and summary["hdf5-w1"]["read_s"]
    assert "ingest zarr / bare time, 1 worker(s)" in capsys.readouterr().out
    assert not list(workdir.glob("ingest-bench-*"))


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
    assert set(loader_summary) == {"dali", "torch", "seed", "png", "monai"}
    assert all(np.isfinite(stats["steady_img_s"]["median"]) for stats in loader_summary.values())


def test_linked_scale_up_repeats_each_study_under_new_ids(synth_data, tmp_path):
    """`benchmarks.pipeline --scale-to N`: N studies, the phantom's own first, then the same ones again under
    new study and series ids, their files hard links of the originals, the CSVs rewritten to match, so
    that ingest plans every copy like a study of its own."""
    from lumbar_fast.cache import IngestSettings
    from lumbar_fast.ingest import plan_ingest

    data = tmp_path / "rsna"
    os.symlink(synth_data, data)
    scaled, figures = pipeline.scaled_by_links(data, 30)
    labels, series = pd.read_csv(scaled / "train.csv"), pd.read_csv(scaled / "train_series_descriptions.csv")
    original = pd.read_csv(synth_data / "train.csv")
    assert len(labels) == 30 and labels["study_id"].is_unique
    assert set(original["study_id"]) < set(labels["study_id"])
    assert series.groupby(["study_id", "series_id"]).ngroups == len(series) and series["series_id"].is_unique
    copy = labels["study_id"].iloc[len(original)]  # the first study again
    assert labels.iloc[len(original), 1:].equals(original.iloc[0, 1:])
    linked = next((scaled / "train_images" / str(copy)).rglob("*.dcm"))
    assert linked.stat().st_nlink >= 2
    assert figures["slices"] == len(list((scaled / "train_images").rglob("*.dcm")))
    coordinates = pd.read_csv(scaled / "train_label_coordinates.csv")
    assert set(coordinates["series_id"]) <= set(series["series_id"])
    plan = plan_ingest(IngestSettings(data_dir=str(scaled)))
    assert len(plan.tasks) == len(series) and len(plan.study_labels) == 30


def test_the_pipeline_projection_names_its_basis_and_sums_its_stages():
    """The projection to one H100 with 16 cores from measured rates, every row with what it stands on."""
    run = {"seconds": 9.0, "peak_rss_mib": 900.0}
    results = {"ingest": {"slices_s": 240.0, "workers": 2}, "writer": {"slices_s": 400.0},
               "train": {s: {**run, "items_s": 30.0, "epoch_items": 400} for s in ("sag_t1", "ax_t2")},
               "locators": {s: {**run, "slices_s": 50.0, "epoch_slices": 1200} for s in ("sag_t1", "ax_t2")},
               "loader": {"cpu_ms_per_item": 0.05, "items_s_per_core": 2e4, "item_bytes": 451584}}
    rows = pipeline.projection(results, studies=20, slices_per_study=78)
    per_core = 240 / 2 / pipeline.H100_HOST_CORE_SLOWDOWN
    assert rows["ingest"]["seconds"] == pytest.approx(1975 * 78 / min(per_core * 15, 400 / 4))
    assert rows["total"]["seconds"] == pytest.approx(sum(r.get("seconds", 0) for n, r in rows.items()
                                                         if n != "total"))
    assert all(row["basis"] for name, row in rows.items() if name != "total")
    assert "Projection (not a measurement)" in pipeline.table(results, rows)
