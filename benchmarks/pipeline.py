"""Pipeline benchmark: a competition folder to a submission, stage by stage, at a size you choose (up to the
real one), and the projection of each stage to one H100 with 16 cores.

Stages, each a fresh process timed with the peak RSS of its largest process: synth (`--size-spread rsna`:
the real data's spread of image sizes; clean files), optionally the same studies again under new ids, by
hard links, up to `--scale-to` studies (ingest pays the same decoding; but the page cache may hold the files,
which 50-65 GB of real data would not be), ingest with every core (peak disk over the finished cache),
each sequence's classifier and locator for a fixed number of steps (their rates measured, the default
schedule projected from them), and predict of the held-out test split from its DICOM folder. Apart, in this
process: the ingest writer's own capacity (slices/s it absorbs from parts already made: the worker count
at which it becomes the bottleneck) and the loader's host CPU per item (the cores a GPU step rate needs).

    python -m benchmarks.pipeline --studies 40 --test-studies 10 --json pipeline.json
    python -m benchmarks.pipeline --studies 100 --scale-to 1975 --stages synth,ingest,writer   # RSNA scale
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import common
from benchmarks.common import count
from benchmarks.data import DONE, level_items, lumbar_fast_command, workers_option
from benchmarks.decode import dicom_files
from benchmarks.ingest import measured_ingest
from lumbar_fast import rsna
from lumbar_fast.cache import DEFAULT_CHANNELS, open_cache
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.ingest import worker_count
from lumbar_fast.locator.config import LocatorConfig
from lumbar_fast.models.classifier import SliceWindows

STAGES = ("synth", "ingest", "writer", "loader", "train", "locators", "predict")
#: measured (docs/benchmarks.md, ../shared/DESIGN.md): one H100, tf_efficientnetv2_s at 224, bf16, bs128,
#: whole-step CUDA graph: 2,385 img/s on 3-slice crops; the default crop makes one backbone pass per window
H100_IMAGES_PER_S = 2385.0
DEFAULT_WINDOWS_PER_ITEM = SliceWindows(DEFAULT_CHANNELS, TrainConfig.window_stride,
                                        TrainConfig.window_padding).count()
#: measured: decoding and resizing a 512² slice costs ~4 ms per core on the H100 host, ~1 ms on this machine
H100_HOST_CORE_SLOWDOWN = 4.0
H100_HOST_CORES = 16
#: the projection's assumption for inference: a forward pass costs about a third of a training step
FORWARD_SHARE = 1 / 3
#: the real train split (for the projection of the default schedule at full size)
RSNA_TRAIN_STUDIES = 1975


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.base_parser(__doc__, repeats=1)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    parser.add_argument("--studies", type=count(), default=40, help="train studies synthesised")
    parser.add_argument("--test-studies", type=count(0), default=10, help="test studies (predict's input)")
    parser.add_argument("--scale-to", type=count(0), default=0,
                        help="train studies after linking the synthesised ones again under new ids (0: none)")
    parser.add_argument("--seed", type=count(0), default=0)
    parser.add_argument("--workers", type=count(), default=None,
                        help="ingest and synth processes (every core)")
    parser.add_argument("--model", default="test_efficientnet", help="classifier and locator backbone")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-batches", type=count(), default=20,
                        help="classifier batches timed per sequence")
    parser.add_argument("--batch-size", type=count(), default=32, help="the classifiers' (the default's 32)")
    parser.add_argument("--locator-series", type=count(), default=12,
                        help="locator series timed per sequence")
    parser.add_argument("--loader-items", type=count(), default=512,
                        help="items the loader's cost is timed on")
    args = parser.parse_args(argv)
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage {sorted(unknown)[0]!r}; choose from {', '.join(STAGES)}")
    return args


# -- the data ------------------------------------------------------------------------------------------------
def synth(args: argparse.Namespace) -> tuple[Path, dict]:
    """The phantom at the real spread of sizes, made once per size and seed; its timing when made now."""
    folder = args.workdir / f"pipeline-{args.studies}+{args.test_studies}-s{args.seed}"
    figures: dict = {}
    if not (folder / DONE).exists():
        shutil.rmtree(folder, ignore_errors=True)
        command = lumbar_fast_command("synth", str(folder), "--studies", str(args.studies), "--test-studies",
                                      str(args.test_studies), "--seed", str(args.seed), "--size-spread",
                                      "rsna", "--no-pitfalls", "--quiet", *workers_option(args.workers))
        figures = common.run_measured(command)
        (folder / DONE).touch()
    files = len(dicom_files(folder))
    figures.update(studies=args.studies, slices=files, dicom_gib=common.directory_mib(folder) / 1024)
    if "seconds" in figures:
        figures["slices_s"] = files / figures["seconds"]
    return folder, figures


def scaled_by_links(data: Path, studies: int) -> tuple[Path, dict]:
    """An RSNA-layout train split of `studies` studies: those of `data` again and again under new study and
    series ids, every DICOM file a hard link (no new bytes on disk), the CSVs rewritten to match."""
    folder = data.with_name(f"{data.name}-x{studies}")
    started = time.perf_counter()
    if not (folder / DONE).exists():
        shutil.rmtree(folder, ignore_errors=True)
        _link_studies(data, folder, studies)
        (folder / DONE).touch()
    files = len(dicom_files(folder))
    return folder, {"studies": studies, "slices": files, "seconds": time.perf_counter() - started}


def _link_studies(data: Path, folder: Path, studies: int) -> None:
    labels = pd.read_csv(data / "train.csv")
    series = pd.read_csv(data / "train_series_descriptions.csv")
    coordinates = pd.read_csv(data / "train_label_coordinates.csv")
    base_ids = labels["study_id"].tolist()
    new_labels, new_series, new_coordinates = [], [], []
    for k in range(studies):
        study = base_ids[k % len(base_ids)]
        new_study = study if k < len(base_ids) else 10**10 + k  # beyond any 8-10 digit id of the phantom
        own = series[series["study_id"] == study]
        new_ids = {old: (old if new_study == study else new_study * 10 + j)
                   for j, old in enumerate(own["series_id"])}
        for old, new in new_ids.items():
            target = folder / "train_images" / str(new_study) / str(new)
            target.mkdir(parents=True)
            for file in (data / "train_images" / str(study) / str(old)).iterdir():
                os.link(file, target / file.name)
        new_labels.append(labels[labels["study_id"] == study].assign(study_id=new_study))
        new_series.append(own.assign(study_id=new_study, series_id=own["series_id"].map(new_ids)))
        rows = coordinates[coordinates["study_id"] == study]
        new_coordinates.append(rows.assign(study_id=new_study, series_id=rows["series_id"].map(new_ids)))
    pd.concat(new_labels).to_csv(folder / "train.csv", index=False)
    pd.concat(new_series).to_csv(folder / "train_series_descriptions.csv", index=False)
    pd.concat(new_coordinates).to_csv(folder / "train_label_coordinates.csv", index=False)


# -- ingest and its writer -----------------------------------------------------------------------------------
def ingest(data: Path, cache: Path, workers: int | None) -> dict:
    """A fresh ingest with every core (or `workers`): slices/s, peak RSS, peak disk ÷ cache, cache size."""
    run = measured_ingest(data, cache, workers, "zarr", interval=0.5)
    slices = open_cache(cache).attrs["source"]["slices"]
    return {"seconds": run["seconds"], "peak_rss_mib": run["peak_rss_mib"], "workers": worker_count(workers),
            "slices": slices, "slices_s": slices / run["seconds"], "cache_gib": run["cache_mib"] / 1024,
            "peak_disk_ratio": run["peak_disk_ratio"]}


def writer_capacity(cache: Path, work: Path, workers: int | None) -> dict:
    """The single writer alone, on the settings `cache` was ingested with: every series converted to its part
    first (by the worker pool), then the Consolidator appends them all, timed: the slices/s it absorbs when
    the workers are infinitely fast."""
    from lumbar_fast.ingest import plan_ingest
    from lumbar_fast.ingest.consolidate import Consolidator
    from lumbar_fast.ingest.convert import commit_part
    from lumbar_fast.processes import pool_context

    shutil.rmtree(work, ignore_errors=True)
    parts = work / "parts"
    parts.mkdir(parents=True)
    params = open_cache(cache).settings()
    plan = plan_ingest(params)
    with pool_context().Pool(worker_count(workers)) as pool:
        slices = sum(pool.imap_unordered(partial(commit_part, params=params, parts=parts), plan.tasks))
    started = time.perf_counter()
    Consolidator(plan, params, parts, work / "cache.zarr").finish()
    seconds = time.perf_counter() - started
    shutil.rmtree(work)
    return {"slices": slices, "seconds": seconds, "slices_s": slices / seconds}


def loader_cost(cache: Path, data: Path, items: int) -> dict:
    """Host CPU seconds per item of the loader's host side (what DALI's worker processes run: gather the uint8
    crops of a batch from the cache's array, draw the default recipe's augmentation; the GPU does the rest),
    here in this process: the cores a GPU step rate needs."""
    from types import SimpleNamespace

    from lumbar_fast import recipes
    from lumbar_fast.loaders import LoaderConfig, normalisation_stats
    from lumbar_fast.loaders.schedule import EpochPlan
    from lumbar_fast.loaders.source import BatchSource

    reader = open_cache(cache)
    channels = reader.slices_per_crop()
    found = level_items(reader, data, "sag_t2").tiled(items)
    config = TrainConfig(sequence="sag_t2", cache=str(cache), run_dir="").resolved(channels)
    mean, std = normalisation_stats(LoaderConfig(), channels)
    plan = EpochPlan(len(found.rows), config.batch_size, 0, 0, 1, True)
    source = BatchSource(str(found.images_path), found.rows, found.labels, plan, mean, std,
                         recipes.augment_config(config.augment, config.shift))
    started, cpu = time.perf_counter(), time.process_time()
    count = sum(len(source(SimpleNamespace(epoch_idx=0, iteration=i))[1]) for i in range(len(plan)))
    return {"items": count, "cpu_ms_per_item": 1000 * (time.process_time() - cpu) / count,
            "items_s_per_core": count / (time.perf_counter() - started),
            "item_bytes": reader.settings().images.size ** 2 * channels}


# -- training and prediction ---------------------------------------------------------------------------------
def train_classifiers(args: argparse.Namespace, cache: Path, runs: Path) -> dict:
    """Each sequence's classifier (the default recipe) for `--train-batches` batches of one epoch: items/s
    from the run's own record (start-up apart), and the items of one default epoch (4 folds of 5)."""
    reader, figures = open_cache(cache), {}
    for sequence in rsna.SEQUENCES:
        run = runs / sequence
        shutil.rmtree(run, ignore_errors=True)
        measured = common.run_measured(lumbar_fast_command(
            "train", "--sequence", sequence, "--cache", str(cache), "--run-dir", str(run), "--model",
            args.model, "--no-pretrained", "--device", args.device, "--epochs", "1", "--batch-size",
            str(args.batch_size), "--limit-batches", str(args.train_batches), "--workers", "1", "--loader",
            "torch", "--no-progress"))
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        labels = reader.level_labels(sequence)
        epoch_items = int((labels["severity"] != rsna.MISSING).sum() * 4 / 5)
        figures[sequence] = {**measured, "items_s": record["train_images_per_s"], "epoch_items": epoch_items}
    return figures


def train_locators(args: argparse.Namespace, cache: Path, runs: Path) -> dict:
    """Each sequence's locator for `--locator-series` series of one epoch: slices/s from its record, and the
    slices of one default epoch (4 folds of 5, each series at most the default window of slices)."""
    reader, figures = open_cache(cache), {}
    max_slices = LocatorConfig.max_slices
    for sequence in rsna.SEQUENCES:
        run = runs / f"locator-{sequence}"
        shutil.rmtree(run, ignore_errors=True)
        measured = common.run_measured(lumbar_fast_command(
            "train-locator", "--sequence", sequence, "--cache", str(cache), "--run-dir", str(run), "--model",
            args.model, "--no-pretrained", "--device", args.device, "--epochs", "1", "--limit-series",
            str(args.locator_series), "--no-progress"))
        record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        per_series = reader.stack_index(sequence).groupby(["study_id", "series_id"]).size()
        epoch_slices = int(np.minimum(per_series.to_numpy(), max_slices).sum() * 4 / 5)
        figures[sequence] = {**measured, "slices_s": record["train_slices_per_s"],
                             "epoch_slices": epoch_slices}
    return figures


def predict(args: argparse.Namespace, data: Path, runs: Path, out: Path) -> dict:
    """`predict --data` over the test split with the runs and locators just trained: wall time, studies/s."""
    locators = [arg for seq in rsna.SEQUENCES for arg in ("--locators", str(runs / f"locator-{seq}"))]
    command = lumbar_fast_command("predict", *(str(runs / s) for s in rsna.SEQUENCES), "--data", str(data),
                                  *locators, "--out", str(out), "--device", args.device, "--no-progress",
                                  *workers_option(args.workers))
    measured = common.run_measured(command)
    return {**measured, "studies": args.test_studies, "studies_s": args.test_studies / measured["seconds"]}


# -- the projection ------------------------------------------------------------------------------------------
def projection(results: dict, studies: int, slices_per_study: float) -> dict[str, dict]:
    """Each stage's time on one H100 with 16 host cores at the real size (1,975 train studies, 100 test
    studies), from the rates measured here and there: a projection, with its assumptions named."""
    scale = RSNA_TRAIN_STUDIES / studies
    rows: dict[str, dict] = {}
    per_core = None
    if "ingest" in results:
        per_core = results["ingest"]["slices_s"] / results["ingest"]["workers"] / H100_HOST_CORE_SLOWDOWN
        rate = per_core * (H100_HOST_CORES - 1)  # one core left to the writer
        if "writer" in results:
            rate = min(rate, results["writer"]["slices_s"] / H100_HOST_CORE_SLOWDOWN)
        rows["ingest"] = {"seconds": RSNA_TRAIN_STUDIES * slices_per_study / rate,
                          "basis": f"{per_core:.0f} slices/s per host core × 15 (writer capped)"}
    items_s = H100_IMAGES_PER_S / DEFAULT_WINDOWS_PER_ITEM
    if "train" in results:
        epoch_items = sum(r["epoch_items"] for r in results["train"].values()) * scale
        epochs = TrainConfig.epochs
        seconds = epochs * epoch_items * (1 + FORWARD_SHARE / 4) / items_s  # + validation, forward only
        rows["classifiers"] = {"seconds": seconds, "basis": f"{epochs} epochs of {epoch_items:,.0f} items at "
                               f"{items_s:.0f} items/s ({DEFAULT_CHANNELS}-slice), validation at a third "
                               "of the cost"}
    slices_s = H100_IMAGES_PER_S * (224 / LocatorConfig.image_size) ** 2
    if "locators" in results:
        epoch_slices = sum(r["epoch_slices"] for r in results["locators"].values()) * scale
        epochs = LocatorConfig.epochs
        rows["locators"] = {"seconds": epochs * epoch_slices / slices_s,
                            "basis": f"{epochs} epochs of {epoch_slices:,.0f} slices at {slices_s:.0f} "
                                     f"slices/s (the classifier's images/s at {LocatorConfig.image_size}², "
                                     "decoder free)"}
    if per_core is not None:
        test_slices = 100 * slices_per_study
        seconds = 2 * test_slices / (per_core * H100_HOST_CORES) + test_slices * FORWARD_SHARE / slices_s \
            + 100 * 25 * FORWARD_SHARE / items_s
        rows["predict (100 studies)"] = {"seconds": seconds, "basis": "two ingests of the test slices, a "
                                         "locator pass over each, 25 crops per study forward only"}
    if "loader" in results:
        cores = items_s * results["loader"]["cpu_ms_per_item"] * H100_HOST_CORE_SLOWDOWN / 1000
        rows["loader cores to feed the GPU"] = {"cores": cores, "basis": f"{items_s:.0f} items/s × "
                                                f"{results['loader']['cpu_ms_per_item']:.2f} ms × 4"}
    rows["total"] = {"seconds": sum(r.get("seconds", 0.0) for r in rows.values())}
    return rows


def table(results: dict, projected: dict[str, dict]) -> str:
    """Measured figures per stage, then the projection (labelled as one)."""
    measured = []
    for name in ("synth", "links", "ingest", "writer", "predict"):
        if name in results and "seconds" in results[name]:
            r = results[name]
            rate = (f"{r['slices_s']:.0f} slices/s" if "slices_s" in r else f"{r['studies_s']:.2f} studies/s"
                    if "studies_s" in r else f"{r['studies']:,} studies, {r['slices']:,} slices")
            extra = (f"peak disk {r['peak_disk_ratio']:.2f}× cache, cache {r['cache_gib']:.2f} GiB"
                     if "cache_gib" in r else "")
            rss = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else ""
            measured.append([name, f"{r['seconds']:.1f}", rate, rss, extra])
    for kind, unit in (("train", "items_s"), ("locators", "slices_s")):
        for sequence, r in results.get(kind, {}).items():
            measured.append([f"{kind} {sequence}", f"{r['seconds']:.1f}", f"{r[unit]:.0f} {unit[:-2]}/s",
                             f"{r['peak_rss_mib']:.0f}", ""])
    if "loader" in results:
        r = results["loader"]
        measured.append(["loader (host)", "", f"{r['items_s_per_core']:.0f} items/s per core",
                         "", f"{r['cpu_ms_per_item']:.2f} CPU ms per item of {r['item_bytes']:,} bytes"])
    header = ["stage", "wall s", "rate", "peak RSS MiB", "notes"]
    lines = [common.markdown_table(header, measured), "", "Projection (not a measurement) to one H100 with "
             "16 host cores at the real size (1,975 train studies, a 100-study test split):", ""]
    rows = [[name, f"{r['seconds'] / 60:.1f} min" if "seconds" in r else f"{r['cores']:.1f} cores",
             r.get("basis", "")] for name, r in projected.items()]
    lines.append(common.markdown_table(["stage", "projected", "from"], rows))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stages = args.stages.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    data, results["synth"] = synth(args)
    print(f"synth: {results['synth']}", flush=True)
    train_data = data
    if args.scale_to:
        train_data, results["links"] = scaled_by_links(data, args.scale_to)
        print(f"links: {results['links']}", flush=True)
    cache, runs = args.workdir / "pipeline.zarr", args.workdir / "pipeline-runs"
    if "ingest" in stages or not cache.exists():
        results["ingest"] = ingest(train_data, cache, args.workers)
        print(f"ingest: {results['ingest']}", flush=True)
    if "writer" in stages:
        results["writer"] = writer_capacity(cache, args.workdir / "pipeline-writer", args.workers)
        print(f"writer: {results['writer']}", flush=True)
    if "loader" in stages:
        results["loader"] = loader_cost(cache, train_data, args.loader_items)
    if "train" in stages:
        results["train"] = train_classifiers(args, cache, runs)
    if "locators" in stages:
        results["locators"] = train_locators(args, cache, runs)
    if "predict" in stages:
        results["predict"] = predict(args, data, runs, args.workdir / "pipeline-submission.csv")
    studies = args.scale_to or args.studies
    slices = results.get("links", results["synth"])["slices"]
    results["projection"] = projection(results, studies, slices / studies)
    return common.report("pipeline", args, results, table(results, results["projection"]))


if __name__ == "__main__":
    common.run_main(main)
