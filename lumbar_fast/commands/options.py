"""Click options shared by several commands, declared once so their names, choices and help stay alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.rsna import SEQUENCES

device_option = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
                             show_default=True)
amp_option = click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "none"]), default="auto",
                          show_default=True,
                          help="Mixed precision; auto = bf16 on Ampere+, fp16 on older GPUs, none on CPU.")


no_pretrained_option = click.option("--no-pretrained", is_flag=True, help="Start from random weights.")
resume_option = click.option("--resume", "resume_dir", type=click.Path(),
                             help="Continue this run from its last.pt.")
no_progress_option = click.option("--no-progress", is_flag=True, help="No progress bar.")


def stacked(options: list[Callable[[Callable], Callable]]) -> Callable[[Callable], Callable]:
    """One decorator applying click options in the order listed (as they show in --help)."""
    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def schedule_options(epochs: int, epochs_help: str | None, lr_help: str,
                     patience: int) -> Callable[[Callable], Callable]:
    """A training command's --epochs, --lr (1e-3) and early-stopping --patience, with its defaults."""
    return stacked([click.option("--epochs", default=epochs, show_default=True, help=epochs_help),
                    click.option("--lr", default=1e-3, show_default=True, help=lr_help),
                    click.option("--patience", default=patience, show_default=True,
                                 help="Early-stopping patience in epochs.")])


def session_options(seed_help: str, limit: Callable[[Callable], Callable]) -> Callable[[Callable], Callable]:
    """A training command's device, seed, smoke-run limit, --resume and --no-progress."""
    seed = click.option("--seed", default=0, show_default=True, help=seed_help)
    return stacked([device_option, seed, limit, resume_option, no_progress_option])


def inference_options(function: Callable) -> Callable:
    """The options of a command that predicts with classifier runs: test-time mirroring, device, precision,
    batch size."""
    options = [click.option("--tta", is_flag=True,
                            help="Average each crop's prediction with its horizontal mirror's, for runs "
                                 "trained with horizontal flips (--augment with hflip; no default recipe "
                                 "flips)."),
               device_option, amp_option,
               click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))]
    return stacked(options)(function)


def start_or_resume(resume_dir: str | None, run: dict[str, Any], resume: Callable[..., Path],
                    start: Callable[[], Path]) -> Path:
    """A training command's run: --resume RUN_DIR continues one (with this session's --device and
    --no-progress, when given), else `run` (run_options' values, with --sequence and --cache) starts one."""
    if resume_dir is not None:
        return resume(resume_dir, **resume_session())
    if run["sequence"] is None or run["cache"] is None:
        raise LumbarFastError("--sequence and --cache are required (or --resume RUN_DIR)")
    return start()


#: the options --resume may be given with: how this session runs (device, progress bar, the torchrun
#: relaunch), not what the run is, which its config.json records
SESSION_OPTIONS = {"resume_dir", "nproc", "device", "no_progress"}


def resume_session() -> dict[str, Any]:
    """The config fields this session's --device and --no-progress change on --resume; any other option
    typed beside --resume (a --cache, a longer --epochs) would be silently ignored, so it is refused."""
    context = click.get_current_context()
    typed = {param.name: param for param in context.command.params
             if context.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE}
    refused = [param.opts[0] for name, param in typed.items() if name not in SESSION_OPTIONS]
    if refused:
        raise click.UsageError(f"--resume continues a run with the options its config.json records; leave "
                               f"out {', '.join(refused)} (or start a new run to change them)")
    session = {"device": context.params["device"]} if "device" in typed else {}
    return session | ({"progress": False} if "no_progress" in typed else {})


def run_options(sequence_help: str, cache_help: str) -> Callable[[Callable], Callable]:
    """The options of a training command: sequence, cache, where the run goes, and the study-level split."""
    options = [
        click.option("--sequence", type=click.Choice(list(SEQUENCES)), help=sequence_help),
        click.option("--cache", type=click.Path(), help=cache_help),
        click.option("--out", type=click.Path(file_okay=False),
                     help="Runs folder: the run gets a new sub-folder in it."),
        click.option("--run-dir", type=click.Path(file_okay=False),
                     help="The run's folder itself (instead of --out)."),
        click.option("--fold", default=0, show_default=True, help="Validation fold."),
        click.option("--folds", default=5, show_default=True, help="Number of study-level folds."),
        click.option("--split-seed", default=0, show_default=True, help="Seed of the study-level split."),
        click.option("--split-file", type=click.Path(),
                     help="A split CSV (study_id, fold) instead of the cache's."),
    ]
    return stacked(options)
