"""Click options shared by several commands, declared once so their names, choices and help stay alike."""

from __future__ import annotations

from collections.abc import Callable

import click

from lumbar_fast.rsna import SEQUENCES

device_option = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
                             show_default=True)
amp_option = click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "none"]), default="auto",
                          show_default=True,
                          help="Mixed precision; auto = bf16 on Ampere+, fp16 on older GPUs, none on CPU.")


def run_options(sequence_help: str, cache_help: str) -> Callable[[Callable], Callable]:
    """The options of a training command: sequence, cache, where the run goes, and the study-level split."""
    options = [
        click.option("--sequence", type=click.Choice(list(SEQUENCES)), help=sequence_help),
        click.option("--cache", type=click.Path(), help=cache_help),
        click.option("--out", type=click.Path(), help="Runs folder: the run gets a new sub-folder in it."),
        click.option("--run-dir", type=click.Path(), help="The run's folder itself (instead of --out)."),
        click.option("--fold", default=0, show_default=True, help="Validation fold."),
        click.option("--folds", default=5, show_default=True, help="Number of study-level folds."),
        click.option("--split-seed", default=0, show_default=True, help="Seed of the study-level split."),
        click.option("--split-file", type=click.Path(),
                     help="A split CSV (study_id, fold) instead of the cache's."),
    ]

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate
