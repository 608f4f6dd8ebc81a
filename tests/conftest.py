"""Shared fixtures: phantom RSNA folders, caches and trained runs built once per test session; the CLI."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# one torch thread per process, before torch loads: `make test` runs a process per core, and a trained test
# run gives the same figures however the suite is run (reductions split over threads round differently)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from lumbar_fast.phantom import PhantomOptions, PitfallRates, generate
from tests.learning import sagittal_t1_only

#: the shared folder's pitfall rates: the defaults, raised so that every pitfall occurs at least once
SYNTH_DATA_PITFALLS = PitfallRates().with_rates(
    corrupt=0.25, duplicate_series=0.2, multi_stack=0.3, j2k=0.1, monochrome1=0.15,
    missing_condition=0.2, missing_label=0.02,
)


#: processes that build the learning tests' large phantom and cache, which every learning test waits for.
#: The suite's other data is built in the asking test process alone: its other process has tests to run,
#: and a pool costs a small build more than it saves (12+3 studies synthesised and ingested: 7.5 core-s in
#: one process, 11.0 with two)
BUILD_WORKERS = 2
#: the learning tests' crop side: at 24 px the default runs train in ~70 % of their time at 32 px and close as
#: much of the prior → best possible gap (2026-12-04, seed 5: 0.88 / 0.92 / 0.87 at 24 px for sag_t1 / sag_t2
#: / ax_t2, 0.86-0.90 at 32)
LEARNING_SIZE = 24
#: fixtures on the learning tests' long chain (synth 240 studies, ingest, train): their tests start first
LONG_CHAIN = {"default_run_of", "sag_t1_cache"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (`make test`: --dist loadgroup)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n 2 --dist loadgroup --no-loadscope-reorder`: the tests that share a module fixture in
    one process (by module), the rest spread one by one; the learning tests first, so that their long chain
    of fixtures runs beside the many short tests rather than after them, those that need one link of it
    before those that need two (which would wait for the others' runs); then the modules kept together,
    the largest units of work, so that the suite ends on short single tests and both processes end
    together."""
    grouped = set()
    for item in items:
        definitions = item._fixtureinfo.name2fixturedefs  # the fixtures the test requests, by name
        if any(defs[-1].scope == "module" for defs in definitions.values()):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
            grouped.add(item.nodeid)
    def links(item: pytest.Item) -> int:
        return len(LONG_CHAIN & set(item.fixturenames))

    items.sort(key=lambda item: (links(item) == 0, links(item), item.nodeid not in grouped))


@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory) -> Path:
    """The folder every process of this test session shares: under pytest-xdist, the parent of the
    workers' own base folders."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if "PYTEST_XDIST_WORKER" in os.environ else base


def built_once(path: Path, build: Callable[[Path], object]) -> Path:
    """`path`, made by `build(path)` in the first process of the session that asks for it; the others wait
    on a lock, then read what it made (a session fixture is per process, the data is per session)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    done = path.with_name(path.name + ".done")
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # what a failed attempt left
            build(path)
            done.touch()
    return path


def digest(*parts: object) -> str:
    """A short name for a fixture's arguments."""
    return hashlib.sha1(repr(parts).encode()).hexdigest()[:12]


@pytest.fixture(scope="session")
def make_synth(shared_folder) -> Callable[..., Path]:
    """Factory: `make_synth(n_studies, n_test_studies=0, workers=1, **PhantomOptions fields)` -> a phantom
    RSNA folder.

    Small images (image_size 128) unless asked otherwise; folders with the same arguments are built once.
    In this process unless asked for more workers (BUILD_WORKERS).
    """
    def make(n_studies: int = 4, n_test_studies: int = 0, workers: int = 1, **options) -> Path:
        options.setdefault("image_size", 128)
        options.setdefault("difficulty", "easy")  # exact labels: the pipeline tests; learning asks for "real"
        key = (n_studies, n_test_studies, tuple(sorted(options.items())))
        folder = built_once(shared_folder / f"synth-{digest(*key)}", lambda out: generate(
            out / "rsna", n_studies, n_test_studies, PhantomOptions(**options), workers=workers,
            progress=False))
        return folder / "rsna"

    return make


@pytest.fixture(scope="session")
def synth_data(make_synth) -> Path:
    """A small RSNA-layout folder: 12 train + 3 test studies, balanced classes, 160-pixel base size,
    every pitfall present (see its phantom_manifest.json), the test answer key in test_labels.csv and
    test_label_coordinates.csv."""
    return make_synth(12, 3, seed=0, image_size=160, balanced=True, pitfalls=SYNTH_DATA_PITFALLS)


@pytest.fixture(scope="session")
def make_cache(shared_folder) -> Callable[..., Path]:
    """Factory: `make_cache(data_dir, **lumbar_fast.ingest.ingest options)` -> a finished cache; caches with
    the same arguments are built once. Small images (size 64) and one worker, in this process (see
    BUILD_WORKERS), unless asked otherwise."""
    from lumbar_fast.ingest import ingest

    def make(data_dir: Path, **options) -> Path:
        options.setdefault("size", 64)
        options.setdefault("workers", 1)
        key = (str(data_dir), tuple(sorted((k, str(v)) for k, v in options.items())))
        name = f"cache.{options.get('fmt', 'zarr')}"
        folder = built_once(shared_folder / f"cache-{digest(*key)}",
                            lambda out: ingest(data_dir, out / name, progress=False, **options))
        return folder / name

    return make


@pytest.fixture(scope="session")
def synth_cache(make_cache, synth_data) -> Path:
    """synth_data's train split ingested into a Zarr cache: 64×64 images, 9-slice level crops (ingest's
    default), default crop widths (its errors table lists the phantom's damaged files)."""
    return make_cache(synth_data)


@pytest.fixture(scope="session")
def trained_runs(synth_cache, shared_folder) -> dict[str, Path]:
    """One classifier run per sequence, validated on fold 0 of 3 of synth_cache: test_efficientnet from
    random weights, one epoch, CPU, torch loader — tiny runs for the stages that consume runs (evaluate,
    predict); they learn little, which those tests do not need."""
    from lumbar_fast.classifier.config import TrainConfig
    from lumbar_fast.classifier.runs import train
    from lumbar_fast.rsna import SEQUENCES

    def build(sequence: str) -> Callable[[Path], Path]:
        return lambda out: train(TrainConfig(
            sequence=sequence, cache=str(synth_cache), run_dir=str(out), model="test_efficientnet",
            pretrained=False, epochs=1, batch_size=8, folds=3, loader="torch", workers=1, device="cpu",
            progress=False))

    return {seq: built_once(shared_folder / "runs" / seq, build(seq)) for seq in SEQUENCES}


@pytest.fixture(scope="session")
def locator_runs(synth_cache, shared_folder) -> list[Path]:
    """Three sag_t2 locator runs, folds 0, 1 and 2 of 3 of synth_cache (the classifier runs' split):
    test_efficientnet from random weights at 64 px, one epoch of 3 series, CPU — tiny runs for evaluate's
    localisation part, whose numbers mean nothing."""
    from lumbar_fast.locator.config import LocatorConfig
    from lumbar_fast.locator.runs import train_locator

    def build(fold: int) -> Callable[[Path], Path]:
        return lambda out: train_locator(LocatorConfig(
            sequence="sag_t2", cache=str(synth_cache), fold=fold, folds=3, run_dir=str(out),
            model="test_efficientnet", pretrained=False, image_size=64, width=16, epochs=1, limit_series=3,
            max_slices=8, device="cpu", progress=False))

    return [built_once(shared_folder / "locator-runs" / f"fold{k}", build(k)) for k in range(3)]


# -- the learning tests' shared phantom and runs -------------------------------------------------------------
@pytest.fixture(scope="session")
def real_balance_data(make_synth) -> Path:
    """The real-difficulty phantom (noisy grades of a continuous narrowing, with an answer key) with the
    real class balance and a seed no other test uses: 240 studies, so that a validation fold of 3 holds at
    least 15 items of every class of every sequence; 96-pixel slices (cropped at LEARNING_SIZE px)."""
    return make_synth(240, seed=11, image_size=96, difficulty="real", workers=BUILD_WORKERS)


@pytest.fixture(scope="session")
def real_balance_cache(make_cache, real_balance_data) -> Path:
    """real_balance_data ingested with ingest's defaults (9-slice crops) at LEARNING_SIZE px."""
    return make_cache(real_balance_data, size=LEARNING_SIZE, workers=BUILD_WORKERS)


@pytest.fixture(scope="session")
def default_run_of(real_balance_cache, shared_folder) -> Callable[[str], Path]:
    """Factory: `default_run_of(sequence)` -> the default-recipe run of that sequence on real_balance_cache
    (the multi-slice model on 9-slice crops), trained once for every learning test that judges it."""
    from tests.learning import default_run

    def run_of(sequence: str) -> Path:
        return built_once(shared_folder / "default-runs" / sequence,
                          lambda out: default_run(real_balance_cache, out, sequence))

    return run_of


@pytest.fixture(scope="session")
def sagittal_t1_of(shared_folder) -> Callable[[Path], Path]:
    """Factory: `sagittal_t1_of(data)` -> a linked copy of the phantom folder `data` that lists its Sagittal
    T1 series alone (tests.learning.sagittal_t1_only), made once."""
    def copy_of(data: Path) -> Path:
        folder = built_once(shared_folder / f"sag-t1-{digest(str(data))}",
                            lambda out: sagittal_t1_only(data, out / "rsna"))
        return folder / "rsna"

    return copy_of


@pytest.fixture(scope="session")
def sag_t1_cache(make_cache, real_balance_data, sagittal_t1_of) -> Callable[..., Path]:
    """Factory: `sag_t1_cache(channels)` -> real_balance_data's Sagittal T1 series alone, ingested with
    `channels`-slice crops at LEARNING_SIZE px."""
    return lambda channels: make_cache(sagittal_t1_of(real_balance_data), size=LEARNING_SIZE,
                                       channels=channels)


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
