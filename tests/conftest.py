"""Shared fixtures: phantom RSNA folders, caches and trained runs built once per test session; the CLI."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path

import pytest

from lumbar_fast.phantom import PhantomOptions, PitfallRates, generate
from tests.learning import sagittal_t1_only

#: the shared folder's pitfall rates: the defaults, raised so that every pitfall occurs at least once
SYNTH_DATA_PITFALLS = PitfallRates().with_rates(
    corrupt=0.25, duplicate_series=0.2, multi_stack=0.3, j2k=0.1, monochrome1=0.15,
    missing_condition=0.2, missing_label=0.02,
)


@pytest.fixture(scope="session")
def make_synth(tmp_path_factory) -> Callable[..., Path]:
    """Factory: `make_synth(n_studies, n_test_studies=0, **PhantomOptions fields)` -> a phantom RSNA folder.

    Small images (image_size 128) unless asked otherwise; folders with the same arguments are built once.
    """
    built: dict[tuple, Path] = {}

    def make(n_studies: int = 4, n_test_studies: int = 0, **options) -> Path:
        options.setdefault("image_size", 128)
        options.setdefault("difficulty", "easy")  # the learning tests stay on it until the defaults change
        key = (n_studies, n_test_studies, tuple(sorted(options.items())))
        if key not in built:
            out = tmp_path_factory.mktemp("synth") / "rsna"
            generate(out, n_studies, n_test_studies, PhantomOptions(**options), workers=2, progress=False)
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def synth_data(make_synth) -> Path:
    """A small RSNA-layout folder: 12 train + 3 test studies, balanced classes, 160-pixel base size,
    every pitfall present (see its phantom_manifest.json), the test answer key in test_labels.csv and
    test_label_coordinates.csv."""
    return make_synth(12, 3, seed=0, image_size=160, balanced=True, pitfalls=SYNTH_DATA_PITFALLS)


@pytest.fixture(scope="session")
def make_cache(tmp_path_factory) -> Callable[..., Path]:
    """Factory: `make_cache(data_dir, **lumbar_fast.ingest.ingest options)` -> a finished cache; caches with
    the same arguments are built once. Small images (size 64) and 2 workers unless asked otherwise."""
    from lumbar_fast.ingest import ingest

    built: dict[tuple, Path] = {}

    def make(data_dir: Path, **options) -> Path:
        options.setdefault("size", 64)
        options.setdefault("workers", 2)
        key = (str(data_dir), tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in built:
            out = tmp_path_factory.mktemp("cache") / f"cache.{options.get('fmt', 'zarr')}"
            ingest(data_dir, out, progress=False, **options)
            built[key] = out
        return built[key]

    return make


@pytest.fixture(scope="session")
def synth_cache(make_cache, synth_data) -> Path:
    """synth_data's train split ingested into a Zarr cache: 64×64 images, 9-slice level crops (ingest's
    default), default crop widths (its errors table lists the phantom's damaged files)."""
    return make_cache(synth_data)


@pytest.fixture(scope="session")
def trained_runs(synth_cache, tmp_path_factory) -> dict[str, Path]:
    """One classifier run per sequence, validated on fold 0 of 3 of synth_cache: test_efficientnet from
    random weights, one epoch, CPU, torch loader — tiny runs for the stages that consume runs (evaluate,
    predict); they learn little, which those tests do not need."""
    from lumbar_fast.classifier.config import TrainConfig
    from lumbar_fast.classifier.runs import train
    from lumbar_fast.rsna import SEQUENCES

    folder = tmp_path_factory.mktemp("runs")
    return {seq: train(TrainConfig(sequence=seq, cache=str(synth_cache), run_dir=str(folder / seq),
                                   model="test_efficientnet", pretrained=False, epochs=1, batch_size=8,
                                   folds=3, loader="torch", workers=1, device="cpu", progress=False))
            for seq in SEQUENCES}


@pytest.fixture(scope="session")
def locator_runs(synth_cache, tmp_path_factory) -> list[Path]:
    """Three sag_t2 locator runs, folds 0, 1 and 2 of 3 of synth_cache (the classifier runs' split):
    test_efficientnet from random weights at 64 px, one epoch of 3 series, CPU — tiny runs for evaluate's
    localisation part, whose numbers mean nothing."""
    from lumbar_fast.locator.config import LocatorConfig
    from lumbar_fast.locator.runs import train_locator

    folder = tmp_path_factory.mktemp("locator-runs")
    return [train_locator(LocatorConfig(sequence="sag_t2", cache=str(synth_cache), fold=k, folds=3,
                                        run_dir=str(folder / f"fold{k}"), model="test_efficientnet",
                                        pretrained=False, image_size=64, width=16, epochs=1, limit_series=3,
                                        max_slices=8, device="cpu", progress=False))
            for k in range(3)]


# -- the learning tests' shared phantom and runs -------------------------------------------------------------
@pytest.fixture(scope="session")
def real_balance_data(make_synth) -> Path:
    """A phantom with the real class balance (no `balanced`) and a seed no other test uses: 240 studies, so
    that a validation fold of 3 holds at least 15 items of every class of every sequence."""
    return make_synth(240, seed=11, image_size=128)


@pytest.fixture(scope="session")
def real_balance_cache(make_cache, real_balance_data) -> Path:
    """real_balance_data ingested with ingest's defaults (9-slice crops) at 32 px."""
    return make_cache(real_balance_data, size=32)


@pytest.fixture(scope="session")
def default_runs(real_balance_cache, tmp_path_factory) -> dict[str, Path]:
    """One default-recipe run per sequence on real_balance_cache (the multi-slice model on 9-slice crops),
    trained once for every learning test that judges them."""
    from lumbar_fast.rsna import SEQUENCES
    from tests.learning import default_run

    folder = tmp_path_factory.mktemp("default-runs")
    return {sequence: default_run(real_balance_cache, folder / sequence, sequence) for sequence in SEQUENCES}


@pytest.fixture(scope="session")
def sag_t1_cache(make_cache, real_balance_data, tmp_path_factory) -> Callable[..., Path]:
    """Factory: `sag_t1_cache(channels)` -> real_balance_data's Sagittal T1 series alone, ingested with
    `channels`-slice crops at 32 px."""
    root = sagittal_t1_only(real_balance_data, tmp_path_factory.mktemp("sag-t1") / "rsna")
    return lambda channels: make_cache(root, size=32, channels=channels)


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., tuple[int, str, str]]:
    """`run_cli(*args)` runs `lumbar-fast args...` in-process: (exit code, stdout, stderr). No capsys, so
    module- and session-scoped fixtures can use it too."""
    from lumbar_fast.cli import main

    def run(*args: object) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main([str(arg) for arg in args])
            code = 0
        except SystemExit as exc:
            code = exc.code
        return code, out.getvalue(), err.getvalue()

    return run
