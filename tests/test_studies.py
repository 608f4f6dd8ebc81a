"""The studies at a tiny size, so that they do not rot: each trains, judges, prints its table and writes its
JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.studies import multislice, recipe
from lumbar_fast import rsna
from tests.test_benchmarks import read_record


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One work folder for the module: the phantoms and their caches are made once and reused."""
    return tmp_path_factory.mktemp("studies")


def test_recipe_study(workdir, capsys):
    """The recipe study at a tiny size: every requested cell trains and is judged on the held-out test split;
    the variant that changes the crops applies to ax_t2 alone."""
    out = workdir / "recipe.json"
    recipe.main(["--workdir", str(workdir), "--studies", "6", "--test-studies", "3", "--image-size", "64",
                 "--size", "32", "--epochs", "1", "--pairs", "401:1", "--sequences", "sag_t2,ax_t2",
                 "--variants", "default;seed recipe;crops without canonical side", "--batch-size", "8",
                 "--data-workers", "1",
                 "--json", str(out)])
    record = read_record(out, "recipe")
    assert "-m benchmarks.studies.recipe" in record["command"]
    cells = record["results"]["cells"]
    assert set(cells["sag_t2"]) == {"default", "seed recipe"}
    assert set(cells["ax_t2"]) == {"default", "seed recipe", "crops without canonical side"}
    runs = record["results"]["runs"]
    assert len(runs) == 5 and all(run["judged_on"] == "held-out test split" for run in runs)
    assert all(sum(run["support"]) > 0 and 0 <= run["balanced_accuracy"] <= 1 for run in runs)
    assert "| crops without canonical side |  |  |" in capsys.readouterr().out


def test_multislice_study(workdir, make_synth, synth_cache, tmp_path, capsys):
    """The multi-slice study at a tiny size, with tiny locators: every variant trains per seed and is judged
    at the labelled, slice-shifted and located points of a real-difficulty phantom's held-out test split,
    beside the best possible score of its answer key."""
    from lumbar_fast.locator.config import LocatorConfig
    from lumbar_fast.locator.runs import train_locator

    for sequence in rsna.SEQUENCES:
        train_locator(LocatorConfig(sequence=sequence, cache=str(synth_cache),
                                    run_dir=str(tmp_path / sequence), model="test_efficientnet",
                                    pretrained=False, image_size=64, width=16, epochs=1, limit_series=3,
                                    max_slices=8, device="cpu", progress=False))
    data = make_synth(12, 3, seed=0, image_size=96, difficulty="real")
    out = workdir / "multislice.json"
    multislice.main(["--workdir", str(workdir), "--data", str(data), "--locators", str(tmp_path),
                     "--locator-size", "64", "--size", "32", "--seeds", "1", "--n-boot", "5", "--epochs", "1",
                     "--variants", "3 slices (default);5 slices, attention", "--data-workers", "1",
                     "--json", str(out)])
    results = read_record(out, "multislice")["results"]["results"]
    assert [result["variant"] for result in results] == ["3 slices (default)", "5 slices, attention"]
    for result in results:
        assert set(result["intervals"]) == {"labelled", "slice -2", "slice -1", "slice +1", "slice +2",
                                            "located", "ratio", "best", "labelled ÷ best", "located ÷ best"}
        summary = result["summary"]
        assert all(np.isfinite(summary[name]["score"]["mean"]) for name in ("labelled", "located"))
        assert 0 < summary["best"]["score"] < summary["labelled"]["score"]["mean"]
        assert summary["labelled ÷ best"]["mean"] == pytest.approx(
            summary["labelled"]["score"]["mean"] / summary["best"]["score"])
    assert "| 5 slices, attention |" in capsys.readouterr().out
    multislice.main(["--workdir", str(workdir), "--data", str(data), "--locators", str(tmp_path),
                     "--size", "32", "--speed-only", "--speed-steps", "1", "--variants",
                     "9 slices, attention", "--json", str(out)])
    (timed,) = read_record(out, "multislice")["results"]["speed"]
    assert timed["windows"] == 7 and timed["speed"]["train_images_per_s"] > 0
    assert timed["speed"]["peak_memory_mb"] > 0
