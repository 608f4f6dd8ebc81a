"""Training benchmark: images/s of the training step fed by each loader, against the synthetic-batch ceiling.

Throughput: contenders `{feed}-{mode}`, feed = ceiling (one batch resident on the device) or a loader over the
real cache with default augmentation, mode = eager or graphs (`--cuda-graphs`, CUDA only). One model per mode,
the classifier's step (classifier/steps.py); each contender warms up once, then every repeat times a window of
`--steps` steps, interleaved. Fraction of the ceiling: loader / ceiling of the same mode, repeat by repeat
(paired), median.
Full epoch: wall time of one training epoch of the seed recipe (batch 32, eager) fed by the seed's DICOM
loader and by ours, on the same items.

    python -m benchmarks.train --device cuda --model tf_efficientnetv2_s --batch-size 128 --amp bf16
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Iterator
from functools import partial

import torch
from torch import nn

from benchmarks import common
from benchmarks.common import count
from benchmarks.data import LevelItems, prepared_items
from benchmarks.peers import PeerLoader, SeedDicomDataset
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.steps import build_model, make_optimizer, make_step
from lumbar_fast.classifier.task import loader_config, train_one_epoch
from lumbar_fast.loaders import build_loader
from lumbar_fast.training.amp import amp_dtype_for, make_scaler

SEED_BATCH_SIZE = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.base_parser(__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", default="tf_efficientnetv2_s", help="any timm model (random init)")
    parser.add_argument("--batch-size", type=count(), default=128)
    parser.add_argument("--amp", default="auto", help="bf16, fp16, none or auto (bf16 on recent GPUs)")
    parser.add_argument("--loaders", default="dali,torch", help="comma-separated: dali, torch")
    parser.add_argument("--modes", default=None, help="eager,graphs (default: both on CUDA, eager on CPU)")
    parser.add_argument("--steps", type=count(), default=30, help="steps per timed window")
    parser.add_argument("--warmup", type=count(0), default=10, help="steps before the first window")
    parser.add_argument("--workers", type=count(), default=4, help="loader worker processes")
    parser.add_argument("--studies", type=count(), default=30, help="synth studies behind the cache")
    parser.add_argument("--sequence", default="ax_t2")
    parser.add_argument("--slices", type=count(), default=3,
                        help="slices per crop: 3 for the plain model, more "
                        "for the multi-slice one (the seed-recipe epoch comparison runs at 3 only)")
    parser.add_argument("--items", type=count(), default=4096,
                        help="training items per epoch (cycling the cache)")
    parser.add_argument("--epoch-items", type=count(0), default=1024,
                        help="items of the full-epoch comparison "
                        "(0: skip it)")
    parser.add_argument("--epoch-repeats", type=count(), default=5,
                        help="interleaved repeats of the full epoch")
    common.add_size_options(parser)
    args = parser.parse_args(argv)
    unknown = set(filter(None, args.loaders.split(","))) - {"dali", "torch"}
    if unknown:  # a typo would be a contender skipped, and the rest run as if asked for
        parser.error(f"unknown loader(s) {', '.join(sorted(unknown))}; choose from dali, torch")
    if 0 < args.epoch_items < SEED_BATCH_SIZE:
        parser.error(f"--epoch-items must be 0 or at least one batch of the seed recipe ({SEED_BATCH_SIZE})")
    return args


def train_config(args: argparse.Namespace, batch_size: int, graphs: bool = False) -> TrainConfig:
    """The run configuration the benchmark trains with: random init (no download), the sequence's default
    recipe (its `auto` values resolved, as `train` resolves them)."""
    return TrainConfig(sequence=args.sequence, cache="", out=str(args.workdir), model=args.model,
                       pretrained=False, cuda_graphs=graphs, amp=args.amp, batch_size=batch_size,
                       workers=args.workers).resolved(args.slices)


class Trainer:
    """A model, Adam and the classifier's training step for one configuration."""

    def __init__(self, config: TrainConfig, channels: int, device: torch.device) -> None:
        self.device = device
        self.model = build_model(config, channels, device).train()
        optimizer = make_optimizer(self.model, config, device)
        amp_dtype = amp_dtype_for(config.amp, device)
        self.step = make_step(self.model, optimizer, nn.CrossEntropyLoss(), amp_dtype, device,
                              config.cuda_graphs, make_scaler(device, amp_dtype))


def loader_feed(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (images, labels) from a loader, epoch after epoch."""
    for epoch in itertools.count():
        for batch in loader.epoch(epoch):
            yield batch.images, batch.labels


def ceiling_feed(batch_size: int, channels: int, size: int, dtype: torch.dtype, device: torch.device,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same random batch of size×size images, resident on the device, forever: a loader that costs
    nothing."""
    images = torch.randn(batch_size, channels, size, size, device=device).to(dtype)
    labels = torch.randint(0, 3, (batch_size,), device=device)
    return itertools.repeat((images.contiguous(memory_format=torch.channels_last), labels))


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def window(trainer: Trainer, feed: Iterator, steps: int) -> dict[str, float]:
    """Time `steps` training steps; images/s and the peak memory torch allocated on the device meanwhile."""
    device = trainer.device
    synchronise(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    images = 0
    for _ in range(steps):
        batch, labels = next(feed)
        trainer.step(batch, labels)
        images += len(labels)
    synchronise(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    return {"img_s": images / seconds, "peak_gpu_mib": peak}


def throughput(args: argparse.Namespace, items: LevelItems, device: torch.device) -> dict:
    """Ceiling and loader contenders in every mode, interleaved; their runs and summary."""
    modes = (args.modes or ("eager,graphs" if device.type == "cuda" else "eager")).split(",")
    cfg = loader_config(train_config(args, args.batch_size), device, amp_dtype_for(args.amp, device),
                        args.slices)
    # loaders first: their workers start before this process does any CUDA work
    loaders, skipped = common.startable({
        name: partial(build_loader, name, items.images_path, items.rows, items.labels, cfg, True)
        for name in args.loaders.split(",") if name})
    ceiling_dtype = cfg.dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    feeds = {"ceiling": ceiling_feed(args.batch_size, args.slices, args.size, ceiling_dtype, device),
             **{name: loader_feed(loader) for name, loader in loaders.items()}}
    trainers = {mode: Trainer(train_config(args, args.batch_size, mode == "graphs"), args.slices, device)
                for mode in modes}
    pairs = {f"{feed}-{mode}": (trainers[mode], feeds[feed]) for mode in modes for feed in feeds}
    for name, (trainer, feed) in pairs.items():
        print(f"  warming up {name}", flush=True)
        window(trainer, feed, args.warmup)
    contenders = {name: partial(window, trainer, feed, args.steps) for name, (trainer, feed) in pairs.items()}
    runs = common.interleaved(contenders, args.repeats)
    for loader in loaders.values():
        loader.close()
    return {"runs": runs, "summary": common.summarise(runs), "modes": modes, "feeds": list(feeds),
            "skipped": skipped}


def full_epoch(args: argparse.Namespace, items: LevelItems, device: torch.device) -> dict:
    """One training epoch of the seed recipe (batch 32, eager) fed by the seed's loader and by ours."""
    items = items.tiled(args.epoch_items)
    config = train_config(args, SEED_BATCH_SIZE)
    cfg = loader_config(config, device, amp_dtype_for(args.amp, device), 3)
    ours = build_loader("auto", items.images_path, items.rows, items.labels, cfg, True)
    dicoms = SeedDicomDataset(items.dicoms, items.labels, args.size)
    seed = PeerLoader(dicoms, SEED_BATCH_SIZE, args.workers, device)
    trainer = Trainer(config, 3, device)

    def one_epoch(loader, epochs: Iterator[int]) -> dict[str, float]:
        start = time.perf_counter()
        train_one_epoch(trainer.step, trainer.model, loader, next(epochs), None, False, device)
        return {"seconds": time.perf_counter() - start}

    # each loader sees its epochs in order (0, 1, 2, …), as in training: no pipeline restarts
    contenders = {"seed-dicom (PeerLoader)": partial(one_epoch, seed, itertools.count()),
                  f"ours ({type(ours).__name__})": partial(one_epoch, ours, itertools.count())}
    runs = common.interleaved(contenders, args.epoch_repeats)
    ours.close()
    seed.close()
    return {"runs": runs, "summary": common.summarise(runs), "items": len(items.rows)}


def device_less(stats: dict) -> bool:
    """True when a contender ran without a CUDA device (no GPU memory figure)."""
    return math.isnan(stats["peak_gpu_mib"]["max"])


def table(result: dict, epoch: dict | None, args: argparse.Namespace) -> str:
    """Images/s per contender, fraction of the same mode's ceiling, peak GPU memory (torch's allocations
    in this process, every contender's model resident); then the full epochs."""
    summary, runs = result["summary"], result["runs"]
    rows = []
    for mode in result["modes"]:
        for feed in result["feeds"]:
            stats = summary[f"{feed}-{mode}"]
            fraction = common.paired_ratio(runs, f"{feed}-{mode}", f"ceiling-{mode}", "img_s")
            rows.append([feed, mode, common.cell(stats["img_s"]),
                         f"{fraction['median']:.3f} ±{fraction['spread_pct']:.0f}%",
                         "n/a" if device_less(stats) else f"{stats['peak_gpu_mib']['max']:.0f}"])
    text = (f"{args.model}, batch {args.batch_size}, amp {args.amp}, {args.steps}-step windows\n\n"
            + common.markdown_table(["feed", "mode", "img/s", "of ceiling", "peak GPU MiB"], rows)
            + common.skipped_lines(result["skipped"]))
    if epoch:
        epoch_rows = [[name, common.cell(stats["seconds"], 2),
                       f"{epoch['items'] / stats['seconds']['median']:.0f}"]
                      for name, stats in epoch["summary"].items()]
        text += (f"\n\nOne training epoch of the seed recipe ({epoch['items']} items, batch "
                 f"{SEED_BATCH_SIZE}, eager)\n\n"
                 + common.markdown_table(["loader", "epoch s", "img/s"], epoch_rows))
    return text


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    items = prepared_items(args.workdir, args.studies, args.sequence, args.items, args.slices,
                           args.image_size, args.size)
    print(f"train benchmark: {args.model}, {args.slices}-slice crops, batch {args.batch_size}, "
          f"{args.device}, {len(items.rows)} items, {args.repeats} interleaved repeats", flush=True)
    result = throughput(args, items, device)
    epoch = full_epoch(args, items, device) if args.epoch_items and args.slices == 3 else None
    results = {"throughput": result, "full_epoch": epoch}
    return common.report("train", args, results, table(result, epoch, args))


if __name__ == "__main__":
    common.run_main(main)
