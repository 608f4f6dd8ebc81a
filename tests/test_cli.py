"""The CLI shell: version, help, and one-line errors."""

import dataclasses
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from lumbar_fast import __version__
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.cli import COMMANDS
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.locator.config import LocatorConfig
from lumbar_fast.rsna import LABEL_COLUMNS, get_sequence


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lumbar_fast", *args], capture_output=True, text=True)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_unknown_command_fails_cleanly():
    result = run_cli("frobnicate")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, message", [
    (("frobnicate",), "No such command 'frobnicate'"),
    (("train", "--sequence", "sag_t3", "--cache", "c.zarr", "--out", "runs"), "'sag_t3' is not one of"),
    (("ingest", "data", "--size", "4"), "--size"),
    (("train", "--sequence", "sag_t1", "--cache", "c.zarr", "--out", "runs", "--label-smoothing", "1"),
     "--label-smoothing"),
    (("train", "--sequence", "sag_t1", "--cache", "c.zarr", "--out", "runs", "--calibration", "platt"),
     "'platt' is not one of"),
    (("ingest",), "Missing argument 'DATA_DIR'"),
    (("train", "--sequence", "sag_t1", "--cache", "c.zarr", "--out", __file__), "Directory"),  # a file
    (("predict", "run", "--cache", "c.zarr", "--out", str(Path(__file__).parent)), "is a directory"),
    (("locate", "run", "--cache", "c.zarr", "--out", str(Path(__file__).parent)), "is a directory"),
    (("train", "--sequence", "sag_t1", "--cache", "c.zarr", "--out", "runs", "--limit-batches", "0"),
     "'--limit-batches': 0 is not in the range x>=1"),
    # a default value typed beside --resume is refused before the torchrun relaunch, as without --nproc
    (("train", "--resume", "runs/r", "--epochs", "5", "--nproc", "2"), "leave out --epochs"),
])
def test_usage_errors_are_one_line(argv, message):
    result = run_cli(*argv)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "--help" in result.stderr


def test_a_torchrun_launch_checks_its_arguments_first(tmp_path):
    """Under --nproc each process would print the error, then torchrun its own traceback wall."""
    train = ("train", "--nproc", "2", "--device", "cpu", "--sequence", "sag_t2", "--out", str(tmp_path))
    for extra, message in ((("--cache", str(tmp_path / "no.zarr")), "no cache at"),
                           (("--cache", "c.zarr", "--lr", "-1"), "--lr -1.0 must be a positive number")):
        result = run_cli(*train, *extra)
        assert result.returncode == 2 and result.stderr == f"error: {result.stderr[7:]}", result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_every_command_has_help():
    for name in COMMANDS:
        result = run_cli(name, "--help")
        assert result.returncode == 0, (name, result.stderr)
        assert "Usage:" in result.stdout
    alone = run_cli()  # `lumbar-fast` with nothing: the help, not an error
    assert alone.returncode == 0 and alone.stdout.startswith("Usage: lumbar-fast") and not alone.stderr


def test_unknown_sequence_is_one_line_error():
    with pytest.raises(LumbarFastError, match="unknown sequence 'sag_t3'"):
        get_sequence("sag_t3")


def test_series_descriptions_match_regardless_of_case_and_spaces():
    from lumbar_fast.rsna import sequence_of_description

    assert sequence_of_description("Sagittal T2/STIR") == "sag_t2"
    assert sequence_of_description(" sagittal  t1 ") == "sag_t1"
    assert sequence_of_description("AXIAL T2") == "ax_t2"
    assert sequence_of_description("Coronal T1") is None and sequence_of_description(float("nan")) is None


def test_label_columns_are_the_competitions():
    assert len(LABEL_COLUMNS) == 25
    assert LABEL_COLUMNS[0] == "spinal_canal_stenosis_l1_l2"
    assert LABEL_COLUMNS[-1] == "right_subarticular_stenosis_l5_s1"



@pytest.mark.parametrize("name, config", [("train", TrainConfig), ("train_locator", LocatorConfig)])
def test_training_commands_default_to_their_configs_defaults(name, config):
    """The commands keep their option defaults literal (their modules load for `lumbar-fast --help`, before
    torch), so this holds them to the config classes' measured defaults: train-locator once trained 30 epochs
    by default while LocatorConfig, the docs and the projection said 15."""
    fields = {field.name: field.default for field in dataclasses.fields(config)}
    unset = click.Option(["--unset"]).default  # what click holds for an option given no default
    command = importlib.import_module(f"lumbar_fast.commands.{name}").command
    defaults = {param.name: param.default for param in command.params
                if param.name in fields and param.default not in (None, unset)}
    assert {"epochs", "lr", "patience", "seed", "model"} <= set(defaults)
    assert defaults == {name: fields[name] for name in defaults}


@pytest.mark.parametrize("config, limit", [(TrainConfig, "limit_batches"), (LocatorConfig, "limit_series")])
def test_a_smoke_run_limit_of_zero_is_refused_before_any_work(config, limit):
    """An epoch of 0 batches left a run folder behind and ended on a misleading "no labelled items"."""
    with pytest.raises(LumbarFastError, match=f"--{limit.replace('_', '-')} must be at least 1"):
        config(sequence="sag_t2", cache="c.zarr", out="runs", **{limit: 0}).check()


@pytest.mark.parametrize("config", [TrainConfig, LocatorConfig])
@pytest.mark.parametrize("change, message", [
    ({"lr": -1.0}, "--lr -1.0 must be a positive number"),  # torch's optimisers raise a traceback
    ({"lr": float("nan")}, "--lr nan must be a positive number"),
    ({"out": "c.zarr"}, "inside the cache c.zarr; choose another --out"),  # a run folder in the store
    ({"out": None, "run_dir": "c.zarr/run"}, "inside the cache c.zarr; choose another --run-dir"),
])
def test_training_arguments_torch_or_the_cache_would_suffer_are_refused(config, change, message):
    with pytest.raises(LumbarFastError, match=re.escape(message)):
        config(**{"sequence": "sag_t2", "cache": "c.zarr", "out": "runs", **change}).check()


def test_a_locator_decoder_of_no_channels_is_refused():
    with pytest.raises(LumbarFastError, match="--width"):
        LocatorConfig(sequence="sag_t2", cache="c.zarr", out="runs", width=0).check()


TOOLS = sorted((Path(__file__).parents[1] / "tools").glob("*.py"))


@pytest.mark.parametrize("script", TOOLS, ids=lambda p: p.name)
def test_every_tool_imports(script, monkeypatch):
    """The tools run by hand only: an import a refactor broke (calibrate_phantom.py's, once) shows here."""
    monkeypatch.syspath_prepend(str(script.parent))  # as `python tools/x.py` runs it: its siblings import
    spec = importlib.util.spec_from_file_location(f"tools_{script.stem}", script)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
