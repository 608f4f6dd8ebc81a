"""`lumbar-fast train-locator`: a level locator per MRI sequence on the cache's stacks (locator_train)."""

from __future__ import annotations

import click

from lumbar_fast.commands.options import amp_option, device_option, run_options
from lumbar_fast.errors import LumbarFastError


@click.command("train-locator")
@run_options("MRI sequence (one locator each).", "Cache written by `lumbar-fast ingest` (train split).")
@click.option("--model", default="resnet18", show_default=True, help="timm backbone name (features_only).")
@click.option("--no-pretrained", is_flag=True, help="Start from random weights.")
@click.option("--image-size", default=160, show_default=True, help="Side of the model's input slices.")
@click.option("--width", default=32, show_default=True, help="Channels of the heatmap decoder.")
@click.option("--epochs", default=30, show_default=True)
@click.option("--lr", default=1e-3, show_default=True, help="AdamW learning rate (cosine schedule).")
@click.option("--patience", default=6, show_default=True, help="Early-stopping patience in epochs.")
@click.option("--monitor", type=click.Choice(["loss", "point-error"]), default="loss", show_default=True,
              help="Validation value for early stopping and best.pt.")
@click.option("--max-slices", default=64, show_default=True,
              help="Training steps see a random window of at most this many consecutive slices (the whole "
                   "series when it fits, so the slice head learns to count levels).")
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@amp_option
@device_option
@click.option("--seed", default=0, show_default=True, help="Seed of model init, order, augmentation.")
@click.option("--limit-series", type=int, help="Stop each epoch after N series (smoke runs).")
@click.option("--resume", "resume_dir", type=click.Path(), help="Continue this run from last.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def command(sequence, cache, out, run_dir, fold, folds, split_seed, split_file, model, no_pretrained,
            image_size, width, epochs, lr, patience, monitor, max_slices, no_augment, amp, device, seed,
            limit_series, resume_dir, no_progress) -> None:
    """Train a sequence's locator: which slice holds each level's point, and where on it."""
    from lumbar_fast.locator_train import LocatorConfig, resume_locator, train_locator

    if resume_dir is not None:
        click.echo(f"run folder: {resume_locator(resume_dir)}")
        return
    if sequence is None or cache is None:
        raise LumbarFastError("--sequence and --cache are required (or --resume RUN_DIR)")
    config = LocatorConfig(
        sequence=sequence, cache=cache, out=out, run_dir=run_dir, fold=fold, folds=folds,
        split_seed=split_seed, split_file=split_file, model=model, pretrained=not no_pretrained,
        image_size=image_size, width=width, epochs=epochs, lr=lr, patience=patience, monitor=monitor,
        max_slices=max_slices, augment=not no_augment, amp=amp, device=device, seed=seed,
        limit_series=limit_series, progress=not no_progress)
    click.echo(f"run folder: {train_locator(config)}")
