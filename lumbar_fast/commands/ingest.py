"""`lumbar-fast ingest`: an RSNA-layout folder (Kaggle download or `lumbar-fast synth`) -> cache."""

from __future__ import annotations

from pathlib import Path

import click

from lumbar_fast.cache import DEFAULT_CHANNELS

#: errors named in ingest's closing lines
SHOWN_ERRORS = 5


@click.command(help="Decode every series of DATA_DIR once (in parallel, resumably) into a cache of "
                    "ordered, windowed, resized stacks and 2.5D level crops with their labels.")
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="cache to write (or resume)")
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--workers", type=click.IntRange(min=1), help="worker processes  [default: CPU cores]")
@click.option("--size", type=click.IntRange(8, 2048), default=224, show_default=True,
              help="side of every stored image (pixels)")
@click.option("--channels", type=click.IntRange(min=1), default=DEFAULT_CHANNELS, show_default=True,
              help="slices per level crop (odd): the labelled slice and its neighbours; 9 feeds the "
              "multi-slice model, 3 the plain one (docs/multislice.md)")
@click.option("--crop-mm-sagittal", type=click.FloatRange(min=0, min_open=True), default=40.0,
              show_default=True, help="level-crop width on sagittal series (mm)")
@click.option("--crop-mm-axial", type=click.FloatRange(min=0, min_open=True), default=50.0,
              show_default=True, help="level-crop width on axial series (mm)")
@click.option("--canonical-side/--no-canonical-side", default=True, show_default=True,
              help="mirror subarticular crops so the graded recess is always the image's right-hand one "
                   "(the crop holds both recesses; docs/recipe.md)")
@click.option("--format", "fmt", type=click.Choice(["zarr", "hdf5"]), default="zarr", show_default=True)
@click.option("--limit-studies", type=click.IntRange(min=1), help="only the first N studies (by study_id)")
@click.option("--coordinates", type=click.Path(path_type=Path, dir_okay=False),
              help="label points (train_label_coordinates format); test split: level crops only with this")
@click.option("--labels", type=click.Path(path_type=Path, dir_okay=False),
              help="severities (train.csv format), e.g. a test answer key; default train.csv for train")
@click.option("--progress/--no-progress", default=True, show_default=True, help="progress bar on stderr")
def command(data_dir: Path, out: Path, split: str, workers: int | None, size: int, channels: int,
            crop_mm_sagittal: float, crop_mm_axial: float, canonical_side: bool, fmt: str,
            limit_studies: int | None, coordinates: Path | None, labels: Path | None, progress: bool) -> None:
    from lumbar_fast.ingest import ingest

    crop_mm = {"sag_t1": crop_mm_sagittal, "sag_t2": crop_mm_sagittal, "ax_t2": crop_mm_axial}
    summary = ingest(data_dir, out, split=split, workers=workers, fmt=fmt, size=size, channels=channels,
                     crop_mm=crop_mm, canonical_side=canonical_side, limit_studies=limit_studies,
                     coordinates=coordinates, labels=labels, progress=progress)
    if summary.up_to_date:
        click.echo(f"{out} is up to date (same data and parameters): nothing to do")
        return
    resumed = f" ({summary.series_resumed} resumed)" if summary.series_resumed else ""
    click.echo(f"ingested {summary.series} series{resumed}, {summary.slices} slices, "
               f"{summary.level_crops} level crops into {out} in {summary.seconds:.1f} s "
               f"({summary.slices_per_second:.0f} slices/s)")
    if summary.errors:
        kinds = ", ".join(f"{count} {reason}" for reason, count in summary.error_reasons.items())
        click.echo(f"{summary.errors} problem(s) recorded in the cache's errors table: {kinds}")
        click.echo(error_summary(out))


def error_summary(out: Path) -> str:
    """The first few errors of the cache at `out`, one per line, and how to list them all."""
    from lumbar_fast.cache import error_lines, open_cache

    lines = error_lines(open_cache(out).errors())
    more = f" ({len(lines) - SHOWN_ERRORS} more)" if len(lines) > SHOWN_ERRORS else ""
    return "\n".join([*(f"  {line}" for line in lines[:SHOWN_ERRORS]),
                      f"list them all{more} with `lumbar-fast info {out} --errors` (or `--csv FILE`)"])
