"""`lumbar-fast evaluate`: a validation report of trained classifier and locator runs, every number beside
its baseline."""

from __future__ import annotations

from pathlib import Path

import click

from lumbar_fast.commands.options import inference_options


@click.command("evaluate")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for report.md, report.json, predictions.csv and the pictures (classifier runs), "
                   "locator_predictions.csv (locator runs).")
@click.option("--cache", "cache_path", type=click.Path(path_type=Path),
              help="Cache to evaluate on (default: the one the runs trained on).")
@click.option("--bootstrap", "n_boot", default=1000, show_default=True, type=click.IntRange(10, 10000),
              help="Bootstrap replicates (studies resampled) for the 95 % intervals.")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--gallery", "gallery_items", default=12, show_default=True, type=click.IntRange(min=1),
              help="Crops in each most-wrong gallery.")
@inference_options
def command(runs: tuple[Path, ...], out_dir: Path, cache_path: Path | None, n_boot: int, seed: int,
            gallery_items: int, tta: bool, device: str, amp: str, batch_size: int) -> None:
    """Evaluate classifier and/or locator RUNS on their validation studies (the shared split; out-of-fold over
    all studies with runs for every fold): classifiers per sequence and, with all three sequences, the
    competition score; locators' point error, slice and level-name figures beside the mean-position
    baseline."""
    from lumbar_fast.evaluate import EvaluateOptions, evaluate
    from lumbar_fast.predict import InferenceOptions
    from lumbar_fast.report import REPORT_MD, format_report, written_files

    options = EvaluateOptions(InferenceOptions(device=device, amp=amp, batch_size=batch_size, tta=tta),
                              n_boot=n_boot, seed=seed, gallery_items=gallery_items)
    report = evaluate(runs, out_dir, cache_path, options)
    click.echo(format_report(report))
    click.echo(f"\nreport: {out_dir / REPORT_MD} (and {written_files(report)})")
