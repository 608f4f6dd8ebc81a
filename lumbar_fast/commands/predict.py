"""`lumbar-fast predict`: a sample_submission-format CSV for every study of a cache, from trained runs."""

from __future__ import annotations

from pathlib import Path

import click

from lumbar_fast.commands.options import inference_options


@click.command("predict")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--cache", "cache_path", required=True, type=click.Path(path_type=Path),
              help="Cache of the studies to predict (`lumbar-fast ingest`, with --coordinates for unlabelled "
                   "studies).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The submission CSV to write.")
@click.option("--allow-prior", is_flag=True,
              help="Fill rows without a crop with the runs' training prior instead of failing.")
@inference_options
@click.option("--locators", "locator_runs", multiple=True, type=click.Path(path_type=Path),
              help="A locator run (repeat: one per sequence): crop at the points it locates (locate → "
                   "ingest --coordinates into a derived cache beside --out) instead of the cache's own.")
def command(runs: tuple[Path, ...], cache_path: Path, out: Path, allow_prior: bool, tta: bool, device: str,
            amp: str, batch_size: int, locator_runs: tuple[Path, ...]) -> None:
    """Predict every study of CACHE with classifier RUNS (one or more per sequence, all three sequences;
    runs of one sequence are averaged) and write a submission file: 25 rows per study."""
    from lumbar_fast.predict import InferenceOptions, predict

    options = InferenceOptions(device=device, amp=amp, batch_size=batch_size, tta=tta)
    click.echo(predict(runs, cache_path, out, allow_prior, options, locator_runs).lines())
