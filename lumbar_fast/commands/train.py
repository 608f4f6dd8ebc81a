"""`lumbar-fast train`: one classifier per MRI sequence on the ingest cache (thin wrapper of train.train)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from lumbar_fast.commands import options


@click.command("train")
@options.run_options("MRI sequence (one model per sequence).", "Cache written by `lumbar-fast ingest`.")
@click.option("--model", default="tf_efficientnetv2_s", show_default=True, help="timm model name.")
@click.option("--weights", type=click.Path(), help="Local pretrained weights file (offline machines).")
@options.no_pretrained_option
@click.option("--pooling", type=click.Choice(["auto", "stem", "attention", "gru"]), default="auto",
              show_default=True, help="How the crop's slices meet: stem (all in the first convolution), "
              "or the backbone on each window of 3 slices pooled by attention or a bidirectional GRU; "
              "auto: stem for 3-slice crops, attention for more (docs/multislice.md).")
@click.option("--window-stride", type=click.IntRange(min=1), default=1, show_default=True,
              help="Slices between the starts of neighbouring windows.")
@click.option("--window-padding", type=click.Choice(["valid", "edge"]), default="valid", show_default=True,
              help="valid: windows inside the crop (N-2 at stride 1); edge: first and last slice repeated "
              "(N windows, one centred on each slice).")
@options.schedule_options(5, "Most epochs (the seed's 5).", "Adam learning rate (torch's default).", 3)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--recipe", type=click.Choice(["default", "seed"]), default="default", show_default=True,
              help="Where the `auto` options come from: the measured per-sequence defaults (docs/recipe.md) "
              "or the seed paper's (no augmentation, unweighted loss, accuracy as the monitor).")
@click.option("--monitor", type=click.Choice(["auto", "accuracy", "loss", "rsna"]), default="auto",
              show_default=True, help="Validation value for early stopping and best.pt (rsna: the "
              "competition's weighted log loss).")
@click.option("--class-weights", type=click.Choice(["auto", "none", "metric", "inverse"]), default="auto",
              show_default=True, help="Cross-entropy weights: none, the metric's 1/2/4, inverse frequency.")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Cross-entropy target smoothing: a share of each label spread over all grades.")
@click.option("--calibration", type=click.Choice(["auto", "none", "temperature"]), default="auto",
              show_default=True, help="After training: temperature scaling fitted on the validation fold to "
              "the weighted log loss (calibration.json; evaluate and predict apply it), or none.")
@options.amp_option
@click.option("--cuda-graphs", is_flag=True, help="Capture the whole training step as one CUDA graph.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model.")
@click.option("--view", type=click.Choice(["level", "slice"]), default="level", show_default=True,
              help="level: 2.5D crop per labelled level; slice: the seed's whole labelled slice (reference).")
@click.option("--control", type=click.Choice(["none", "shuffled-labels", "level-off"]), default="none",
              show_default=True, help="Negative control that must not learn: training labels shuffled "
              "across items, or every item's crop taken from the adjacent level.")
@click.option("--augment", default="auto", show_default=True,
              help="auto, none, all, or a comma list of rotate, scale, shift, hflip, intensity.")
@click.option("--no-augment", is_flag=True, help="Train without augmentation (--augment none).")
@click.option("--shift", default=0.0625, show_default=True,
              help="Largest random shift of a crop, fraction of its width per axis (0.125 was measured "
                   "worse at labelled points and no better at located ones: docs/recipe.md).")
@click.option("--loader", type=click.Choice(["auto", "dali", "torch"]), default="auto", show_default=True)
@click.option("--workers", default=2, show_default=True, help="Loader worker processes.")
@options.session_options("Seed of model init, shuffling, augmentation.",
                         click.option("--limit-batches", type=click.IntRange(min=1),
                                      help="Stop each epoch's training and validation after N batches "
                                      "(smoke runs; evaluate then sees more validation items)."))
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N processes (one per GPU) on this machine: re-launches this command under "
              "`torchrun --standalone --nproc-per-node N`. --batch-size is per process.")
def command(model, weights, no_pretrained, pooling, window_stride, window_padding, epochs, batch_size, lr,
            patience, recipe, monitor, class_weights, label_smoothing, calibration,
            amp, cuda_graphs, compile_, view, control, augment, no_augment, shift, loader, workers, device,
            seed, limit_batches, resume_dir, no_progress, nproc, **run) -> None:
    """Train one sequence's classifier; writes a run folder (config, metrics, curves, checkpoints).
    Under torchrun each process trains on its share of every epoch (DistributedDataParallel)."""
    from lumbar_fast.classifier.config import TrainConfig

    config = partial(
        TrainConfig, **run, model=model, weights=weights, pretrained=not no_pretrained, pooling=pooling,
        window_stride=window_stride, window_padding=window_padding, epochs=epochs,
        batch_size=batch_size, lr=lr, patience=patience, recipe=recipe, monitor=monitor,
        class_weights=class_weights, label_smoothing=label_smoothing, calibration=calibration, amp=amp,
        cuda_graphs=cuda_graphs, compile=compile_, view=view, control=control,
        augment="none" if no_augment else augment, shift=shift, loader=loader, workers=workers,
        device=device, seed=seed, limit_batches=limit_batches, progress=not no_progress)
    if nproc > 1:  # this process only waits for torchrun's, and refuses here, once, what each would refuse
        if resume_dir is not None:
            options.resume_session()
        elif run["sequence"] is not None and run["cache"] is not None:
            from lumbar_fast.cache import open_training_cache

            config().check()
            open_training_cache(run["cache"])
        relaunch_under_torchrun(nproc, device)
        return
    from lumbar_fast.classifier.runs import resume, train

    announce(options.start_or_resume(resume_dir, run, resume, lambda: train(config())))


def announce(run_dir: Path) -> None:
    """Print the run folder, once: torchrun's rank 0 alone speaks."""
    from lumbar_fast.distributed import is_main

    if is_main():
        click.echo(f"run folder: {run_dir}")


def relaunch_under_torchrun(nproc: int, device: str) -> None:
    """Re-run this very command, without --nproc, as `nproc` torchrun processes; exit with their status.
    The options typed are passed on as typed (a default typed beside --resume must still be refused there)."""
    from lumbar_fast.distributed import relaunch
    from lumbar_fast.loaders.gpu import resolve_device

    context = click.get_current_context()
    args = [context.info_name]
    for param in context.command.params:
        value = context.params[param.name]
        typed = context.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
        if param.name == "nproc" or not typed:
            continue
        args += [param.opts[0]] if param.is_flag else [param.opts[0], str(value)]
    code = relaunch(nproc, resolve_device(device), args)
    if code:
        raise SystemExit(code)
