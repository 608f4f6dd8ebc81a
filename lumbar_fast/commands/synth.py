"""`lumbar-fast synth`: write a phantom RSNA 2024-layout data set."""

from __future__ import annotations

from pathlib import Path

import click

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.phantom import MANIFEST_NAME, PhantomOptions, PitfallRates, generate
from lumbar_fast.phantom.answer_key import ANSWER_KEY_NAME
from lumbar_fast.phantom.options import DIFFICULTIES, SIZE_SPREADS


def parse_rates(specs: tuple[str, ...], base: PitfallRates) -> PitfallRates:
    """Apply `NAME=RATE` settings to `base`; malformed ones are a one-line user error."""
    rates: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise LumbarFastError(f"--pitfall expects NAME=RATE, e.g. multi_stack=0.5 (got {spec!r})")
    return base.with_rates(**rates)


@click.command(name="synth")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--studies", "n_studies", type=int, required=True, help="Number of labelled train studies.")
@click.option("--test-studies", "n_test", type=int, default=0, show_default=True,
              help="Number of test studies (test_images/, sample_submission.csv and an answer key).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same data set.")
@click.option("--image-size", type=int, default=PhantomOptions.image_size, show_default=True,
              help="Base Rows = Columns of every slice, 64..1024 (series deviate at the varied_size rate).")
@click.option("--size-spread", type=click.Choice(SIZE_SPREADS), default=PhantomOptions.size_spread,
              show_default=True, help="base: every series at --image-size; rsna: each series draws its size "
              "from the competition's spread (mostly 384-512, some 256-640), for timing at the real cost.")
@click.option("--difficulty", type=click.Choice(DIFFICULTIES), default=PhantomOptions.difficulty,
              show_default=True,
              help="real: a latent severity graded by a noisy rater, with the answer key "
                   f"{ANSWER_KEY_NAME} (the best possible score); easy: disjoint classes labelled exactly.")
@click.option("--signal", type=float, default=1.0, show_default=True,
              help="Scales the narrowing the pixels show, 0..2 (labels, answer key unchanged); lower is "
              "subtler.")
@click.option("--balanced", is_flag=True, help="Equal class frequencies instead of the real ones.")
@click.option("--no-pitfalls", is_flag=True,
              help="Clean data: 12-bit, uncompressed, ordered, one stack, base size, all labels present.")
@click.option("--pitfall", "pitfall_specs", multiple=True, metavar="NAME=RATE",
              help=f"Set one pitfall's rate (repeatable; after --no-pitfalls). Names: "
                   f"{', '.join(PitfallRates.names())}.")
@click.option("--workers", type=int, default=None, help="Worker processes (default: all cores).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(out: Path, n_studies: int, n_test: int, seed: int, image_size: int, size_spread: str,
            difficulty: str, signal: float, balanced: bool, no_pitfalls: bool, pitfall_specs: tuple[str, ...],
            workers: int | None, quiet: bool) -> None:
    """Write a synthetic RSNA 2024 lumbar spine data set (CSVs + DICOM) to the new folder OUT."""
    base = PitfallRates.none() if no_pitfalls else PitfallRates()
    options = PhantomOptions(seed=seed, image_size=image_size, signal=signal, balanced=balanced,
                             pitfalls=parse_rates(pitfall_specs, base), difficulty=difficulty,
                             size_spread=size_spread)
    if workers is not None and workers < 1:
        raise LumbarFastError(f"--workers must be at least 1 (got {workers})")
    summary = generate(out, n_studies, n_test, options, workers=workers, progress=not quiet)
    click.echo(
        f"wrote {summary.train_studies} train + {summary.test_studies} test studies, "
        f"{summary.series} series, {summary.files} DICOM files ({summary.damaged_files} damaged on purpose), "
        f"{summary.coordinate_rows} coordinate rows to {summary.out_dir} in {summary.seconds:.1f} s; "
        f"pitfalls listed in {MANIFEST_NAME}"
    )
