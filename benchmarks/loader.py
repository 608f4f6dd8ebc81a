"""Loader benchmark: cache → normalised batch on the device, images/s, ours against the usual peers.

Contenders, same items, batch size, worker processes and output dtype (float32), all shuffled:
  dali, torch          our loaders over the ingest cache, no augmentation (like the peers);
  dali-aug, torch-aug  the same with the default training augmentation (rotate, scale, shift, flip,
                       intensity);
  seed                 the seed's way: a DataLoader decoding the labelled DICOM on every epoch;
  png                  the Kaggle-standard cache: one PNG per item, PIL + ToTensor + Normalize;
  monai                MONAI's CacheDataset (each DICOM decoded once into RAM, by threads) and its
                       ThreadDataLoader (the `dev` extra installs MONAI; without it the contender is skipped).
Each repeat builds a contender, times its first epoch (start-up included) and then the steady epochs.

    python -m benchmarks.loader [--device cuda] [--workers 2] [--items 512] [--json out.json]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch

from benchmarks import common
from benchmarks.common import count
from benchmarks.data import LevelItems, prepared_items
from benchmarks.peers import (
    PeerLoader,
    PngDataset,
    SeedDicomDataset,
    monai_cache_dataset,
    write_png_cache,
)
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders import AugmentConfig, Batch, Loader, LoaderConfig, build_loader

CONTENDERS = ("dali", "torch", "seed", "png", "monai", "dali-aug", "torch-aug")
OURS = ("dali", "torch", "dali-aug", "torch-aug")
PEERS = ("seed", "png", "monai")
FIGURES = ("first_epoch_img_s", "steady_img_s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.base_parser(__doc__)
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of "
                        + ", ".join(CONTENDERS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--workers", type=count(), default=2, help="worker processes of every contender")
    parser.add_argument("--batch-size", type=count(), default=32)
    parser.add_argument("--studies", type=count(), default=8, help="synth studies behind the cache")
    parser.add_argument("--sequence", default="ax_t2")
    parser.add_argument("--items", type=count(), default=512,
                        help="items per epoch (cycling the cache's items)")
    parser.add_argument("--epochs", type=count(), default=2,
                        help="epochs per repeat: the first, then steady ones")
    common.add_size_options(parser)
    args = parser.parse_args(argv)
    args.contenders = [name.strip() for name in args.contenders.split(",") if name.strip()]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(sorted(unknown))}; choose from "
                     + ", ".join(CONTENDERS))
    return args


def make_loader(name: str, items: LevelItems, args: argparse.Namespace) -> Callable[[], Loader]:
    """A function that builds contender `name` (a fresh loader with our Loader's face)."""
    device = torch.device(args.device)
    if name in OURS:
        kind, _, augmented = name.partition("-")
        cfg = LoaderConfig(batch_size=args.batch_size, device=args.device, workers=args.workers,
                           augment=AugmentConfig() if augmented else None, dtype=torch.float32)
        return partial(build_loader, kind, items.images_path, items.rows, items.labels, cfg, True)
    if name == "seed":
        dataset = SeedDicomDataset(items.dicoms, items.labels, size=args.size)
    elif name == "monai":
        return partial(_monai_loader, items, args)
    else:
        images = np.load(items.images_path, mmap_mode="r")
        pngs = write_png_cache(np.asarray(images), args.workdir / f"{items.images_path.stem}-png")
        dataset = PngDataset([pngs[row] for row in items.rows], items.labels)
    return partial(PeerLoader, dataset, args.batch_size, args.workers, device)


def _monai_loader(items: LevelItems, args: argparse.Namespace) -> PeerLoader:
    """The MONAI contender, built (its cache filled) inside the timed first epoch, as its user would."""
    try:
        from monai.data import ThreadDataLoader

        dataset = monai_cache_dataset(items.dicoms, items.labels, args.size, args.workers)
    except ImportError:
        raise LumbarFastError("MONAI is not installed (pip install monai, or the `dev` extra)") from None
    return PeerLoader(dataset, args.batch_size, args.workers, torch.device(args.device),
                      loader_class=ThreadDataLoader)


def timed_epoch(batches: Iterator[Batch], device: torch.device) -> int:
    """Drain one epoch, touching every batch on the device; the number of images."""
    count = 0
    for batch in batches:
        count += batch.images.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count


def contender(build: Callable[[], Loader], epochs: int, device: torch.device) -> dict[str, float]:
    """Build one loader, run `epochs` epochs: first-epoch and steady-state images/s."""
    start = time.perf_counter()
    loader = build()
    first = timed_epoch(loader.epoch(0), device)
    first_done = time.perf_counter()
    steady = sum(timed_epoch(loader.epoch(epoch), device) for epoch in range(1, epochs))
    end = time.perf_counter()
    loader.close()
    return {"first_epoch_img_s": first / (first_done - start),
            "steady_img_s": steady / (end - first_done) if steady else float("nan")}


def speed_ups(runs: dict, names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """Ours against each peer, repeat by repeat (paired ratios), for the first epoch and the steady state."""
    return {f"{ours} / {peer}": {key: common.paired_ratio(runs, ours, peer, key) for key in FIGURES}
            for ours in OURS for peer in PEERS if ours in names and peer in names}


def table(summary: dict, ratios: dict, names: list[str]) -> str:
    """Median images/s (± half-range) per contender, then ours against each peer (paired ratios)."""
    rows = [[name, *(common.cell(summary[name][key]) for key in FIGURES)] for name in names]
    rows += [[pair, *(common.ratio_cell(stats[key]) for key in FIGURES)] for pair, stats in ratios.items()]
    return common.markdown_table(["contender", "first epoch img/s", "steady img/s"], rows)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    items = prepared_items(args.workdir, args.studies, args.sequence, args.items,
                           image_size=args.image_size, size=args.size)
    device = torch.device(args.device)
    builders = {name: make_loader(name, items, args) for name in args.contenders}
    probes, skipped = common.startable(builders)
    for probe in probes.values():
        probe.close()
    names = [name for name in args.contenders if name not in skipped]
    print(f"loader benchmark: {len(items.rows)} items, batch {args.batch_size}, {args.workers} workers, "
          f"{args.device}, {args.repeats} interleaved repeats", flush=True)
    contenders = {name: partial(contender, builders[name], args.epochs, device) for name in names}
    runs = common.interleaved(contenders, args.repeats)
    summary, ratios = common.summarise(runs), speed_ups(runs, names)
    return common.report("loader", args, {"runs": runs, "summary": summary, "speed_ups": ratios,
                                          "skipped": skipped},
                         table(summary, ratios, names) + common.skipped_lines(skipped))


if __name__ == "__main__":
    common.run_main(main)
