"""`lumbar-fast predict`: a sample_submission-format CSV for every study of a cache, or of a folder of DICOM
test studies, from trained runs."""

from __future__ import annotations

from pathlib import Path

import click

from lumbar_fast.commands.options import inference_options


@click.command("predict")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--cache", "cache_path", type=click.Path(path_type=Path),
              help="Cache of the studies to predict (`lumbar-fast ingest`, with --coordinates for unlabelled "
                   "studies).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path),
              help="Or a competition folder (test_images/, test_series_descriptions.csv): ingest, locate "
                   "(--locators), ingest the crops at the located points with the runs' settings, predict.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The submission CSV to write.")
@click.option("--allow-prior", is_flag=True,
              help="Fill rows without a crop from the runs' training prior (reweighted 1/2/4 as the metric "
                   "weighs the grades: the best constant prediction) instead of failing.")
@inference_options
@click.option("--locators", "locator_runs", multiple=True, type=click.Path(path_type=Path),
              help="A locator run (repeat: one per sequence): crop at the points it locates (locate → "
                   "ingest --coordinates into a derived cache: beside --out with --cache, in the work folder "
                   "with --data) instead of the cache's own.")
@click.option("--keep", is_flag=True, help="--data: keep the caches and located points in <out>.work/ (a "
              "rerun reuses the caches of the same settings and CSVs; it locates again) instead of a "
              "temporary folder.")
@click.option("--workers", type=click.IntRange(min=1), help="--data: ingest worker processes (default: every "
              "core).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="--data: progress bars.")
def command(runs: tuple[Path, ...], cache_path: Path | None, data_dir: Path | None, out: Path,
            allow_prior: bool, tta: bool, device: str, amp: str, batch_size: int,
            locator_runs: tuple[Path, ...], keep: bool, workers: int | None, progress: bool) -> None:
    """Predict every study of CACHE (or of the DICOM folder DATA) with classifier RUNS (one or more per
    sequence, all three sequences; runs of one sequence are averaged) and write a submission file: 25 rows
    per study. Locator runs among RUNS count as --locators (so `--locators locs/*` works as the shell
    expands it)."""
    if (cache_path is None) == (data_dir is None):
        raise click.UsageError("give exactly one of --cache and --data")
    from lumbar_fast.locator.runs import locator_runs_apart
    from lumbar_fast.predict import InferenceOptions, predict

    classifier_runs, among_runs = locator_runs_apart(runs)
    runs, locator_runs = tuple(classifier_runs), (*locator_runs, *among_runs)
    if not runs:
        raise click.UsageError("give at least one classifier run (of `lumbar-fast train`)")

    options = InferenceOptions(device=device, amp=amp, batch_size=batch_size, tta=tta)
    if data_dir is not None:
        from lumbar_fast.predict_folder import predict_folder

        click.echo(predict_folder(runs, data_dir, out, locator_runs, allow_prior, options, keep, workers,
                                  progress).lines())
        return
    click.echo(predict(runs, cache_path, out, allow_prior, options, locator_runs).lines())
