"""Recipe study: which training defaults learn, measured on phantoms with the real class balance.

Every variant changes one factor of the default recipe (augmentation, class weights, early-stopping monitor,
learning rate, crop design, the phantom's signal) and trains each sequence with it for every (phantom seed,
training seed) pair. The checkpoint the run keeps as best (by its own monitor, on its validation fold) is then
judged on the phantom's held-out test split through its answer key, so the judged items never chose an
epoch: balanced accuracy and weighted log loss ÷ the training prior's, mean ± standard deviation over the
pairs, with the smallest per-class support beside them. docs/recipe.md holds the figures that chose the
defaults.

    python -m benchmarks.studies.recipe --json recipe.json                 # tiny model, CPU: ~1 h on 2 cores
    python -m benchmarks.studies.recipe --device cuda --pretrained         # tf_efficientnetv2_s, 224, a GPU
    python -m benchmarks.studies.recipe --cache CACHE --pairs 0:1,0:2,0:3  # your own cache: judged on fold 0

On a GPU the defaults become the product's: tf_efficientnetv2_s, 224-pixel crops of 384-pixel phantoms.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.studies import common
from benchmarks.studies.common import Variant, best_record, cell, mean_sd
from lumbar_fast import rsna
from lumbar_fast.cache import open_cache
from lumbar_fast.classifier.runs import read_run
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.ingest import ingest
from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.phantom import PhantomOptions, generate
from lumbar_fast.predict import InferenceOptions, predict_crops
from lumbar_fast.recipes import AUGMENTATIONS
from lumbar_fast.report import markdown_table
from lumbar_fast.runfolder import RunFolder

VARIANTS: tuple[Variant, ...] = (
    Variant("default"),
    Variant("seed recipe", {"recipe": "seed"}),
    Variant("no augmentation", {"augment": "none"}),
    *(Variant(f"{piece} only", {"augment": piece}) for piece in AUGMENTATIONS),
    Variant("all augmentation (with hflip)", {"augment": "all"}),
    Variant("class weights none", {"class_weights": "none"}),
    Variant("class weights inverse", {"class_weights": "inverse"}),
    Variant("monitor accuracy", {"monitor": "accuracy"}),
    Variant("monitor loss", {"monitor": "loss"}),
    Variant("lr 3e-4", {"lr": 3e-4}),
    Variant("lr 3e-3", {"lr": 3e-3}),
    Variant("StepLR step 3", {"step_size": 3}),
    Variant("constant lr (StepLR step 5)", {"step_size": 5}),
    Variant("no augmentation + StepLR step 3", {"augment": "none", "step_size": 3}),
    Variant("crops without canonical side", canonical_side=False, sequences=("ax_t2",)),
    Variant("default, signal 0.5", signal=0.5),
    Variant("no augmentation, signal 0.5", {"augment": "none"}, signal=0.5),
    Variant("shift only, signal 0.5", {"augment": "shift"}, signal=0.5),
    Variant("default without shift, signal 0.5", {"augment": "rotate,scale,intensity"}, signal=0.5),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="201:1,202:2,203:3",
                        help="comma list of PHANTOM_SEED:TRAINING_SEED pairs (seeds the tests do not use)")
    parser.add_argument("--variants", default="all", help="semicolon-separated variant names, or all")
    parser.add_argument("--sequences", default=",".join(rsna.SEQUENCES))
    parser.add_argument("--studies", type=int, default=300, help="phantom train studies")
    parser.add_argument("--test-studies", type=int, default=80, help="phantom test studies: the judged set")
    parser.add_argument("--image-size", type=int, help="phantom DICOM size [CPU 128, GPU 384]")
    parser.add_argument("--size", type=int, help="cache image size, ingest --size [CPU 64, GPU 224]")
    parser.add_argument("--slices", type=int, default=3, help="slices per level crop, ingest --channels (the "
                        "study in docs/recipe.md ran 3, the plain model; 9 is the multi-slice default)")
    parser.add_argument("--model", help="timm model [CPU test_efficientnet, GPU tf_efficientnetv2_s]")
    parser.add_argument("--pretrained", action="store_true", help="ImageNet weights (hub or --weights)")
    parser.add_argument("--weights", help="local pretrained weights file")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--loader", default="torch", help="torch (no worker start-up per run) or dali")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="a cache of your own: the variants that change its data "
                        "are left out, and each run is judged on its validation fold (fold 0)")
    args = parser.parse_args(argv)
    on_gpu = resolve_device(args.device).type == "cuda"  # NVML: CUDA stays uninitialised for DALI
    args.device = "cuda" if on_gpu else "cpu"
    for name, cpu, gpu in (("image_size", 128, 384), ("size", 64, 224),
                           ("model", "test_efficientnet", "tf_efficientnetv2_s")):
        if getattr(args, name) is None:
            setattr(args, name, gpu if on_gpu else cpu)
    args.pairs = [tuple(int(seed) for seed in pair.split(":")) for pair in args.pairs.split(",")]
    args.sequences = tuple(args.sequences.split(","))
    return args


def chosen_variants(args: argparse.Namespace) -> list[Variant]:
    """The variants asked for, less those that re-make the data when the data is the user's own cache."""
    variants = common.chosen(VARIANTS, args.variants)
    if args.cache:
        variants = [v for v in variants if v.canonical_side and v.signal == 1.0]
    return variants


# -- data ------------------------------------------------
def phantom_caches(args: argparse.Namespace, seed: int, signal: float,
                   canonical_side: bool) -> tuple[Path, Path]:
    """The (train, test) caches of one phantom, made once in the work folder and reused."""
    name = f"recipe-{args.studies}+{args.test_studies}-{args.image_size}px-seed{seed}-signal{signal:g}"
    folder = args.workdir / name
    data = folder / "rsna"
    if not (data / "phantom_manifest.json").is_file():
        generate(data, args.studies, args.test_studies,
                 PhantomOptions(seed=seed, image_size=args.image_size, signal=signal),
                 workers=args.data_workers, progress=False)
    crops = "canonical" if canonical_side else "plain"
    train_cache, test_cache = (folder / f"{split}-{args.size}-c{args.slices}-{crops}.zarr"
                               for split in ("train", "test"))
    crop_options = dict(size=args.size, channels=args.slices, canonical_side=canonical_side,
                        workers=args.data_workers, progress=False)
    ingest(data, train_cache, **crop_options)
    ingest(data, test_cache, split="test", coordinates=data / "test_label_coordinates.csv",
           labels=data / "test_labels.csv", **crop_options)
    return train_cache, test_cache


# -- one run ------------------------------------------------
def run_variant(args: argparse.Namespace, variant: Variant, sequence: str, pair: tuple[int, int],
                runs: Path) -> dict[str, Any]:
    """Train one cell's run and judge its best checkpoint: the figures of one (variant, sequence, pair)."""
    phantom_seed, train_seed = pair
    if args.cache:
        train_cache, test_cache = args.cache, None
    else:
        train_cache, test_cache = phantom_caches(args, phantom_seed, variant.signal, variant.canonical_side)
    run_dir = runs / f"{sequence}-{variant.name.replace(' ', '_')}-{phantom_seed}-{train_seed}"
    settings = {"sequence": sequence, "cache": str(train_cache), "model": args.model,
                "pretrained": args.pretrained, "weights": args.weights, "epochs": args.epochs,
                "batch_size": args.batch_size, "device": args.device, "loader": args.loader,
                "workers": args.workers, "seed": train_seed, "progress": False}
    started = time.perf_counter()
    common.train_run(run_dir, settings, variant.changes)
    seconds = time.perf_counter() - started
    records = RunFolder(run_dir).read_metrics()
    best = best_record(run_dir)
    judged = judge(run_dir, test_cache, args.device) if test_cache else validation_figures(best)
    return {"variant": variant.name, "sequence": sequence, "phantom_seed": phantom_seed,
            "train_seed": train_seed, "best_epoch": best["epoch"], "epochs_run": len(records),
            "seconds": seconds, "val_balanced_accuracy": best["val_balanced_accuracy"], **judged}


def judge(run_dir: Path, test_cache: Path, device: str) -> dict[str, Any]:
    """The run's best checkpoint on every labelled crop of the test cache, against its training prior."""
    run = read_run(run_dir)
    cache = open_cache(test_cache)
    labels = cache.level_labels(run.sequence)
    rows = np.flatnonzero(labels["severity"].to_numpy() != rsna.MISSING)
    probs = predict_crops(run, cache, rows, InferenceOptions(device=device))
    return {**common.judge(labels["severity"].to_numpy()[rows], probs, run.prior),
            "judged_on": "held-out test split"}


def validation_figures(best: dict[str, Any]) -> dict[str, Any]:
    """The best epoch's own validation figures (a user's cache has no answer key)."""
    wll = best["val_weighted_log_loss"]
    return {"balanced_accuracy": best["val_balanced_accuracy"],
            "wll_ratio": wll / best["val_prior_weighted_log_loss"], "weighted_log_loss": wll,
            "support": best["val_support"], "judged_on": "validation fold (fold 0)"}


# -- the table ------------------------------------------------
def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per sequence and variant: mean and standard deviation of the judged figures over the pairs, and the
    smallest support of each class."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(row["sequence"], {}).setdefault(row["variant"], {"runs": []})["runs"].append(row)
    for variants in cells.values():
        for stats in variants.values():
            runs = stats.pop("runs")
            for key in ("balanced_accuracy", "wll_ratio", "best_epoch"):
                stats[key] = mean_sd([run[key] for run in runs])
            stats["pairs"] = len(runs)
            stats["min_support"] = np.min([run["support"] for run in runs], axis=0).tolist()
    return cells


def table(cells: dict[str, dict[str, dict[str, Any]]], judged_on: str) -> str:
    """One Markdown table: a row per variant, balanced accuracy and wll ÷ prior per sequence."""
    sequences = list(cells)
    variants = list(dict.fromkeys(name for seq in sequences for name in cells[seq]))
    header = ["variant", *(f"{seq} {what}" for seq in sequences for what in ("bal. acc.", "wll ÷ prior"))]
    rows = []
    for name in variants:
        row = [name]
        for seq in sequences:
            stats = cells[seq].get(name)
            row += [cell(stats["balanced_accuracy"], 2), cell(stats["wll_ratio"], 2)] if stats else ["", ""]
        rows.append(row)
    support = "; ".join(
        f"{seq} {'/'.join(map(str, np.min([c['min_support'] for c in cells[seq].values()], axis=0)))}"
        for seq in sequences)
    pairs = max(stats["pairs"] for seq in sequences for stats in cells[seq].values())
    return (markdown_table(header, rows) + f"\n\nMean ± standard deviation over {pairs} (phantom "
            f"seed, training seed) pairs, judged on the {judged_on}; smallest judged items per class "
            f"(normal/mild, moderate, severe): {support}.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        variants = chosen_variants(args)
    except LumbarFastError as exc:
        raise SystemExit(f"error: {exc}") from None
    runs = args.workdir / "recipe-runs" / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for variant in variants:
        for sequence in (s for s in args.sequences if s in variant.sequences):
            for pair in args.pairs:
                row = run_variant(args, variant, sequence, pair, runs)
                rows.append(row)
                print(f"{variant.name} | {sequence} | pair {pair}: balanced accuracy "
                      f"{row['balanced_accuracy']:.3f}, wll ÷ prior {row['wll_ratio']:.3f}, best epoch "
                      f"{row['best_epoch']}, support {row['support']} ({row['seconds']:.0f} s)", flush=True)
    cells = summarise(rows)
    common.report("recipe", args, {"runs": rows, "cells": cells}, table(cells, rows[0]["judged_on"]))


if __name__ == "__main__":
    main()
