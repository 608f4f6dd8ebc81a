"""`lumbar-fast locate`: level coordinates for every study of a cache, from trained locator runs."""

from __future__ import annotations

from pathlib import Path

import click

from lumbar_fast.commands.options import device_option


@click.command("locate")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path),
              help="Cache of the studies to locate (train or test split; stacks are enough).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV to write, in train_label_coordinates.csv format (for `ingest --coordinates`).")
@device_option
def command(runs: tuple[Path, ...], cache_path: Path, out: Path, device: str) -> None:
    """Locate every level of every study in CACHE with locator RUNS (one per sequence); write the points."""
    from lumbar_fast.cache import open_cache
    from lumbar_fast.locator.locate import locate, write_coordinates

    coordinates = locate(list(runs), open_cache(cache_path), device)
    write_coordinates(coordinates, out)
    studies = coordinates["study_id"].nunique()
    click.echo(f"wrote {len(coordinates)} points of {studies} studies to {out}")
