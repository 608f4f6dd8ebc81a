"""`lumbar-fast train-locator`: a level locator per MRI sequence on the cache's stacks
(lumbar_fast.locator)."""

from __future__ import annotations

from functools import partial

import click

from lumbar_fast.commands import options


@click.command("train-locator")
@options.run_options("MRI sequence (one locator each).",
                     "Cache written by `lumbar-fast ingest` (train split).")
@click.option("--model", default="resnet18", show_default=True, help="timm backbone name (features_only).")
@options.no_pretrained_option
@click.option("--image-size", default=160, show_default=True, help="Side of the model's input slices.")
@click.option("--width", default=32, show_default=True, help="Channels of the heatmap decoder.")
@options.schedule_options(15, None, "AdamW learning rate (cosine schedule).", 6)
@click.option("--monitor", type=click.Choice(["loss", "point-error"]), default="loss", show_default=True,
              help="Validation value for early stopping and best.pt.")
@click.option("--max-slices", default=64, show_default=True,
              help="Training steps see a random window of at most this many consecutive slices (the whole "
                   "series when it fits, so the slice head learns to count levels).")
@click.option("--no-augment", is_flag=True, help="Train without augmentation.")
@options.amp_option
@options.session_options("Seed of model init, order, augmentation.",
                         click.option("--limit-series", type=click.IntRange(min=1),
                                      help="Train each epoch on N series (smoke runs; validation "
                                      "sees every series)."))
def command(model, no_pretrained, image_size, width, epochs, lr, patience, monitor, max_slices, no_augment,
            amp, device, seed, limit_series, resume_dir, no_progress, **run) -> None:
    """Train a sequence's locator: which slice holds each level's point, and where on it."""
    from lumbar_fast.locator.config import LocatorConfig
    from lumbar_fast.locator.runs import resume_locator, train_locator

    config = partial(
        LocatorConfig, **run, model=model, pretrained=not no_pretrained, image_size=image_size, width=width,
        epochs=epochs, lr=lr, patience=patience, monitor=monitor, max_slices=max_slices,
        augment=not no_augment, amp=amp, device=device, seed=seed, limit_series=limit_series,
        progress=not no_progress)
    folder = options.start_or_resume(resume_dir, run, resume_locator, lambda: train_locator(config()))
    click.echo(f"run folder: {folder}")
