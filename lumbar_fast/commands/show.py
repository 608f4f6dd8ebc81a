"""`lumbar-fast show`: a contact sheet of one study, or a grid of random crops of one class, as a PNG."""

from __future__ import annotations

from pathlib import Path

import click

from lumbar_fast.errors import LumbarFastError


@click.command(help="Draw one study's ordered stacks, labelled points and level crops (--study), "
                    "or random level crops of one condition and severity across studies (--grid).")
@click.argument("cache", type=click.Path(path_type=Path))
@click.option("--study", type=int, help="study_id to draw as a contact sheet")
@click.option("--sequence", "sequences", multiple=True,
              help="sequence(s) of the study to draw (sag_t1, sag_t2, ax_t2; repeatable); default: all")
@click.option("--points", type=click.Path(path_type=Path),
              help="CSV of extra points in train_label_coordinates format (e.g. a locator's output)")
@click.option("--grid", is_flag=True, help="draw random crops of one --condition and --severity instead")
@click.option("--condition", help="grid: condition (e.g. spinal_canal_stenosis)")
@click.option("--severity", help="grid: Normal/Mild, Moderate, Severe (or 0, 1, 2)")
@click.option("--n", "count", type=click.IntRange(min=1), default=25, show_default=True,
              help="grid: how many crops")
@click.option("--seed", type=int, default=0, show_default=True, help="grid: which random crops")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True, help="PNG to write")
def command(cache: Path, study: int | None, sequences: tuple[str, ...], points: Path | None, grid: bool,
            condition: str | None, severity: str | None, count: int, seed: int, out: Path) -> None:
    # imported on use, so that `--help` does not load the cache, Pillow and torch
    from lumbar_fast import show
    from lumbar_fast.cache import open_cache

    if out.suffix.lower() != ".png":  # a .jpg would hold PNG bytes
        raise LumbarFastError(f"--out {out}: show writes PNG images; give a path ending in .png")
    if grid:
        if study is not None or sequences or points is not None:
            raise LumbarFastError("--grid draws crops across studies: drop --study, --sequence and --points")
        if condition is None or severity is None:
            raise LumbarFastError("--grid needs --condition and --severity")
        panels, title = show.class_grid(open_cache(cache), show.parse_condition(condition),
                                        show.parse_severity(severity), count, seed)
        picture = show.render_gallery(panels, out, title)
        click.echo(title)  # how many crops there were: --n may ask for more
    else:
        if study is None:
            raise LumbarFastError("give --study ID for a contact sheet, or --grid for a grid of one class")
        if condition is not None or severity is not None:
            raise LumbarFastError("--condition and --severity go with --grid")
        extra = show.read_points(points) if points is not None else None
        plan, unplaced = show.study_sheet(open_cache(cache), study, sequences, extra)
        picture = show.draw(plan)
        show.save_png(picture, out)
        if unplaced:
            click.echo(f"{unplaced} point(s) of study {study} match no cached slice (series, instance); "
                       "not drawn", err=True)
    width, height = picture.image.size
    click.echo(f"wrote {out} ({width}x{height} px)")
