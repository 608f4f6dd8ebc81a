"""Multi-slice study: does a model that sees the neighbouring slices grade right a slice off the point?

On a phantom with the real class balance and a test split with its answer key, every variant (slices per crop,
pooling, windows, schedule, shift) trains the studied sequences' classifiers (sag_t1 by default: the
foraminal term, where located points one slice off were thought to cost the most; `--sequences all` for the
whole submission) once per training seed with the default recipe, and is judged on the test split six ways:
at the labelled points, with the studied sequences' labelled slices moved -2, -1, +1 and +2 slices (what a
locator's slice error does), and at the points trained locators find (`--locators`). The other sequences'
rows come from fixed three-slice default classifiers trained once, so the competition score moves with the
studied sequences alone. Each figure is the mean over the training seeds ± their standard deviation, with a
bootstrap interval over test studies of that mean, beside the best possible score on the same rows (the
phantom's answer key, `lumbar-fast score`'s) and each score's ratio to it; training and inference images/s and
peak memory of every model beside them. The recipe's variants on the multi-slice model (augmentation, class
weights, label smoothing, monitor, schedule) are judged the same way. docs/multislice.md and docs/recipe.md
hold the figures.

    python -m benchmarks.studies.multislice --data PHANTOM --locators RUNS --json out.json  # CPU, 64 px
    python -m benchmarks.studies.multislice --data PHANTOM --locators RUNS --sequences all --variants NAME
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.studies import common
from benchmarks.studies.common import Variant, best_record, cell, mean_sd
from lumbar_fast import metrics, rsna
from lumbar_fast.cache import CacheReader, open_cache
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.runs import read_run
from lumbar_fast.csvfile import read_csv
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.ingest import COORDINATE_COLUMNS, ingest
from lumbar_fast.locator.locate import locate, write_coordinates
from lumbar_fast.models.classifier import SliceWindows
from lumbar_fast.phantom.answer_key import best_possible
from lumbar_fast.predict import (
    InferenceOptions,
    crop_predictions,
    fill_rows,
    location_probabilities,
    sequence_priors,
)
from lumbar_fast.report import markdown_table
from lumbar_fast.runfolder import RunFolder

SLICE_SHIFTS = (-2, -1, 1, 2)
#: the judged sets given bootstrap intervals and ratios to the best possible score
BOUNDED = ("labelled", "located")
#: the competition term each sequence's classifier predicts
TERM_OF = {seq.name: rsna.CONDITION_GROUP[seq.conditions[0]] for seq in rsna.SEQUENCES.values()}


VARIANTS: tuple[Variant, ...] = (
    Variant("3 slices (default)", slices=3),
    Variant("9 slices, stem", {"pooling": "stem"}, 9),
    Variant("5 slices, attention", {"pooling": "attention"}, 5),
    Variant("7 slices, attention", {"pooling": "attention"}, 7),
    Variant("9 slices, attention", {"pooling": "attention"}, 9),
    Variant("5 slices, gru", {"pooling": "gru"}, 5),
    Variant("9 slices, gru", {"pooling": "gru"}, 9),
    Variant("9 slices, attention, stride 2", {"pooling": "attention", "window_stride": 2}, 9),
    Variant("5 slices, attention, edge", {"pooling": "attention", "window_padding": "edge"}, 5),
    Variant("9 slices, attention, 10 epochs (StepLR 4)",
            {"pooling": "attention", "epochs": 10, "step_size": 4}, 9),
    # shorter schedules: the classifiers' epochs are the dominant stage of the time to a first submission
    Variant("9 slices, attention, 3 epochs", {"pooling": "attention", "epochs": 3}, 9),
    Variant("9 slices, attention, 3 epochs (StepLR 1)",
            {"pooling": "attention", "epochs": 3, "step_size": 1}, 9),
    Variant("3 slices, shift 0.125", {"shift": 0.125}, 3),
    Variant("9 slices, attention, shift 0.125", {"pooling": "attention", "shift": 0.125}, 9),
    # the recipe's factors, one at a time, on the multi-slice default
    Variant("9 slices, attention, no augmentation", {"pooling": "attention", "augment": "none"}, 9),
    Variant("9 slices, attention, class weights none", {"pooling": "attention", "class_weights": "none"}, 9),
    Variant("9 slices, attention, label smoothing 0.1", {"pooling": "attention", "label_smoothing": 0.1}, 9),
    Variant("9 slices, attention, monitor loss", {"pooling": "attention", "monitor": "loss"}, 9),
    Variant("9 slices, attention, lr 3e-3", {"pooling": "attention", "lr": 3e-3}, 9),
    Variant("9 slices, attention, seed recipe", {"pooling": "attention", "recipe": "seed"}, 9),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="a phantom folder with a test split and its answer key (lumbar-fast synth)")
    parser.add_argument("--locators", type=Path, required=True,
                        help="folder with a trained locator run per sequence, named after it")
    parser.add_argument("--sequences", default="sag_t1", help="comma list of studied sequences, or all")
    parser.add_argument("--variants", default="all", help="semicolon-separated variant names, or all")
    parser.add_argument("--seeds", default="1,2,3", help="training seeds (the tests use others)")
    parser.add_argument("--fixed-seed", type=int, default=1, help="seed of the other sequences' classifiers")
    parser.add_argument("--size", type=int, default=64, help="crop size, ingest --size")
    parser.add_argument("--locator-size", type=int, default=128, help="the locators' stack size")
    parser.add_argument("--model", default="test_efficientnet")
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--epochs", type=int, default=5, help="most epochs (the recipe's 5) unless a variant "
                        "sets its own")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--n-boot", type=int, default=300, help="bootstrap replicates over test studies")
    parser.add_argument("--no-slice-shifts", action="store_true",
                        help="judge at the labelled and located points only (no slice-shifted sets)")
    parser.add_argument("--speed-only", action="store_true", help="only time each variant's model (training "
                        "and inference images/s, peak memory), each in a fresh process, on random crops")
    parser.add_argument("--speed-steps", type=int, default=10, help="timed steps per speed figure")
    parser.add_argument("--speed-batch", type=int, default=32)
    args = parser.parse_args(argv)
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.sequences = list(rsna.SEQUENCES) if args.sequences == "all" else args.sequences.split(",")
    unknown = [seq for seq in args.sequences if seq not in rsna.SEQUENCES]
    if unknown:
        parser.error(f"unknown sequence {unknown[0]!r}; choose from {', '.join(rsna.SEQUENCES)} or all")
    return args


# -- the judged sets: the test split's crops at labelled, slice-shifted and located points -------------
class TestSets:
    """Test caches of every judged set and slice count, ingested once into the work folder."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.data = args, args.data
        self.folder = args.workdir / f"multislice-{args.data.name}-{args.size}px"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.labels = args.data / "test_labels.csv"
        self.coordinates = {"labelled": args.data / "test_label_coordinates.csv"}
        self.studied = "+".join(args.sequences)  # the sequences whose points the shifted sets move
        self.ingested: set[Path] = set()

    def names(self) -> list[str]:
        """The judged sets, in table order."""
        return ["labelled", *(f"slice {k:+d}" for k in self.shifts()), "located"]

    def shifts(self) -> tuple[int, ...]:
        """The slice shifts of the judged sets."""
        return () if self.args.no_slice_shifts else SLICE_SHIFTS

    def prepare(self) -> None:
        """Write the coordinate files of the shifted and located sets (the located ones by the locators)."""
        labelled = self.cache("labelled", 3)
        for shift in self.shifts():
            path = self.folder / f"coordinates-{self.studied}-slice{shift:+d}.csv"
            if not path.is_file():
                shifted_coordinates(self.coordinates["labelled"], labelled, self.args.sequences, shift, path)
            self.coordinates[f"slice {shift:+d}"] = path
        runs = f"{self.args.locators.resolve()}@{self.args.locator_size}"
        located = self.folder / f"coordinates-located-{hashlib.sha1(runs.encode()).hexdigest()[:10]}.csv"
        if not located.is_file():
            stacks = self.folder / f"test-stacks-{self.args.locator_size}.zarr"
            ingest(self.data, stacks, split="test", size=self.args.locator_size,
                   workers=self.args.data_workers, progress=False)
            runs = [self.args.locators / sequence for sequence in rsna.SEQUENCES]
            write_coordinates(locate(runs, open_cache(stacks), self.args.device), located)
        self.coordinates["located"] = located
        self.best = best_judged(self.labels, labelled)

    def cache(self, name: str, slices: int) -> Path:
        """The test cache of one judged set with crops of `slices` slices (ingested on first use), named
        after its coordinates file."""
        path = self.folder / f"test-{self.coordinates[name].stem}-c{slices}.zarr"
        if path not in self.ingested:
            ingest(self.data, path, split="test", size=self.args.size, channels=slices, progress=False,
                   coordinates=self.coordinates[name], labels=self.labels, workers=self.args.data_workers)
            self.ingested.add(path)
        return path


def shifted_coordinates(coordinates: Path, labelled_cache: Path, sequences: list[str], shift: int,
                        out: Path) -> None:
    """The answer key's coordinates with every point of `sequences` moved `shift` slices along its stack (in
    ascending position; clamped at the stack's ends), its in-plane point kept."""
    cache = open_cache(labelled_cache)
    moved = pd.concat([moved_instances(cache, sequence, shift) for sequence in sequences])
    table = read_csv(coordinates, COORDINATE_COLUMNS, "coordinates")
    keys = table.assign(condition=table["condition"].map(rsna.CONDITION_FROM_TITLE),
                        level=table["level"].map(rsna.LEVEL_FROM_TITLE))
    joined = keys.merge(moved[["study_id", "series_id", "condition", "level", "moved"]], how="left",
                        on=["study_id", "series_id", "condition", "level"], validate="many_to_one")
    table["instance_number"] = joined["moved"].fillna(joined["instance_number"]).astype(np.int64).to_numpy()
    table.to_csv(out, index=False)


def moved_instances(cache: CacheReader, sequence: str, shift: int) -> pd.DataFrame:
    """The sequence's level labels with `moved`: the instance number `shift` slices along the stack."""
    index, labels = cache.stack_index(sequence), cache.level_labels(sequence)
    last = index.groupby(["series_id", "stack"])["slice"].max()
    instance = index.set_index(["series_id", "stack", "slice"])["instance_number"]
    stacks = list(zip(labels["series_id"], labels["stack"], strict=True))
    target = np.clip(labels["slice"].to_numpy() + shift, 0, last.loc[stacks].to_numpy())
    slices = [(*stack, int(slice_)) for stack, slice_ in zip(stacks, target, strict=True)]
    return labels.assign(moved=instance.loc[slices].to_numpy())


# -- runs ------------------------------------------------
def train_run(args: argparse.Namespace, sequence: str, cache: Path, run_dir: Path, seed: int,
              changes: dict[str, Any]) -> Path:
    """One default-recipe run: a folder with a last.pt is resumed (at once when finished), one without is
    started afresh."""
    settings = {"sequence": sequence, "cache": str(cache), "model": args.model, "pretrained": args.pretrained,
                "epochs": args.epochs, "device": args.device, "loader": "torch", "workers": args.workers,
                "seed": seed, "progress": False}
    return common.train_run(run_dir, settings, changes)


def crops_of(run_dirs: list[Path], cache: Path, device: str) -> tuple[pd.DataFrame, float]:
    """The runs' crop predictions on a test cache and their inference images/s."""
    started = time.perf_counter()
    crops = crop_predictions([read_run(path) for path in run_dirs], open_cache(cache), None,
                             InferenceOptions(device=device))
    return crops, len(crops) / (time.perf_counter() - started)


def best_judged(labels: Path, cache: Path) -> Judged:
    """The answer key's best prediction on a test cache's solution rows: the score no model beats on average
    (the realised best possible of `lumbar-fast score`)."""
    best = best_possible(labels)
    if best is None:
        raise LumbarFastError(f"no answer key beside {labels}: the study needs a real-difficulty phantom")
    solution = metrics.labels_to_rows(open_cache(cache).study_labels())
    prediction = best["prediction"].set_index("row_id").loc[solution["row_id"], list(rsna.SUBMISSION_COLUMNS)]
    return Judged(solution, prediction.to_numpy(), pd.DataFrame(), {})


@dataclass
class Judged:
    """One run's submission probabilities on one set, aligned to the set's solution rows."""

    solution: pd.DataFrame
    probabilities: np.ndarray
    crops: pd.DataFrame  # the studied sequences' crops, with their labels
    priors: dict[str, np.ndarray]


def judge(crops: pd.DataFrame, fixed: pd.DataFrame, cache: Path, priors: dict[str, np.ndarray]) -> Judged:
    """The submission rows of the studied sequences' crops with the fixed sequences' crops (as `predict`
    writes them: crops averaged per location, rows without a crop the training prior)."""
    solution = metrics.labels_to_rows(open_cache(cache).study_labels())
    filled = fill_rows(solution, location_probabilities(pd.concat([crops, fixed])), priors)
    return Judged(solution, filled.probabilities, crops, priors)


def figures(judged: list[Judged], rows: np.ndarray | None = None,
            copies: np.ndarray | None = None) -> dict[str, float]:
    """Seed-mean competition losses of one set: the score and its four terms (on resampled rows when
    `rows` is given)."""
    out: dict[str, list[float]] = {}
    for one in judged:
        solution = one.solution
        pick = np.arange(len(solution)) if rows is None else rows
        studies = solution["study_id"].to_numpy()[pick] if copies is None else copies
        losses = metrics.competition_losses(studies, solution["condition"].to_numpy()[pick],
                                            solution["severity"].to_numpy()[pick], one.probabilities[pick])
        for name, value in losses.items():
            out.setdefault(name, []).append(value)
    return {name: float(np.mean(values)) for name, values in out.items()}


def crop_figures(judged: Judged) -> dict[str, dict[str, float]]:
    """Per studied sequence: balanced accuracy and weighted log loss ÷ prior of its labelled crops."""
    result = {}
    for sequence, crops in judged.crops[judged.crops["severity"] != rsna.MISSING].groupby("sequence"):
        probs = crops[list(rsna.PROBABILITY_COLUMNS)].to_numpy()
        figures = common.judge(crops["severity"].to_numpy(), probs, judged.priors[sequence])
        result[sequence] = {key: figures[key] for key in ("balanced_accuracy", "wll_ratio")}
    return result


def intervals(by_set: dict[str, list[Judged]], n_boot: int) -> dict[str, dict[str, tuple[float, float]]]:
    """Bootstrap intervals over test studies of each set's seed-mean score and terms, and of the ratio of
    the seed-mean located and labelled scores (same resampled studies in both: every set's solution rows
    are the same rows in the same order)."""
    keys = ["study_id", "condition", "level"]
    first = by_set["labelled"][0].solution[keys]
    assert all(one.solution[keys].equals(first) for judged in by_set.values() for one in judged)
    study_ids = first["study_id"].to_numpy()

    def replicate(rows: np.ndarray, copies: np.ndarray) -> dict[str, float]:
        """Every set's seed-mean figures on the resampled rows, and the ratio of the scores."""
        values = {}
        for name, judged in by_set.items():
            for key, value in figures(judged, rows, copies).items():
                values[f"{name}|{key}"] = value
        values["ratio"] = values["located|score"] / values["labelled|score"]
        for name in BOUNDED:
            values[f"{name} ÷ best"] = values[f"{name}|score"] / values["best|score"]
        return values

    flat = metrics.bootstrap_intervals(study_ids, replicate, n_boot, seed=0)
    nested: dict[str, dict[str, tuple[float, float]]] = {}
    for key, interval in flat.items():
        name, _, figure = key.partition("|")
        nested.setdefault(name, {})[figure or "value"] = interval
    return nested


# -- speed and memory ------------------------------------------------
def speed(args: argparse.Namespace, variant: Variant) -> dict[str, float]:
    """Training and inference images/s and peak memory of the variant's model, in a fresh process (its peak
    resident memory on CPU, or peak CUDA memory, is then the model's own)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_speed_in_process, (args.model, variant.slices, variant.changes, args.size,
                                              args.speed_batch, args.speed_steps, args.device))


def _speed_in_process(model_name: str, slices: int, changes: dict[str, Any], size: int, batch: int,
                      steps: int, device_name: str) -> dict[str, float]:
    """speed's worker: time `steps` Adam training steps and inference passes on random crops."""
    import torch

    from lumbar_fast.models.classifier import create_classifier

    device = torch.device(device_name)
    config = TrainConfig(sequence="sag_t1", cache="-", **changes).resolved(slices)
    model = create_classifier(model_name, slices, config.pooling, config.window_stride, config.window_padding,
                              pretrained=False).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters())
    images = torch.rand(batch, slices, size, size, device=device).to(memory_format=torch.channels_last)
    labels = torch.zeros(batch, dtype=torch.int64, device=device)

    def timed(step: Callable[[], None]) -> float:
        """Images/s of `step` over `steps` calls after one warm-up call."""
        step()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return batch * steps / (time.perf_counter() - started)

    def train_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad():
            model(images)

    model.train()
    train_rate = timed(train_step)
    model.eval()
    infer_rate = timed(infer_step)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss())
    return {"train_images_per_s": train_rate, "inference_images_per_s": infer_rate,
            "peak_memory_mb": peak / 2**20, "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}


def windows_of(variant: Variant) -> int:
    """Backbone passes per item of the variant's model (1 for the plain one)."""
    config = TrainConfig(sequence="sag_t1", cache="-", **variant.changes).resolved(variant.slices)
    if config.pooling == "stem":
        return 1
    return SliceWindows(variant.slices, config.window_stride, config.window_padding).count()


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


# -- the study ------------------------------------------------
def study_variant(args: argparse.Namespace, variant: Variant, sets: TestSets, fixed: dict[str, pd.DataFrame],
                  priors: dict[str, np.ndarray], train_caches: dict[int, Path], runs: Path) -> dict[str, Any]:
    """Train the variant per seed and studied sequence, and judge every seed's runs on every set."""
    by_set: dict[str, list[Judged]] = {name: [] for name in sets.names()}
    best_score = figures([sets.best])["score"]
    per_seed = []
    name = variant.name.replace(" ", "_").replace(",", "")
    for seed in args.seeds:
        run_dirs = [train_run(args, sequence, train_caches[variant.slices],
                              runs / f"{sequence}-{name}-{seed}", seed, variant.changes)
                    for sequence in args.sequences]
        records = [record for path in run_dirs for record in RunFolder(path).read_metrics()]
        row: dict[str, Any] = {
            "seed": seed, "best_epochs": [best_epoch(path) for path in run_dirs],
            "train_images_per_s": statistics.median(r["train_images_per_s"] for r in records),
            "train_seconds": sum(r["train_seconds"] for r in records)}
        run_priors = {**priors, **{run.sequence: run.prior for run in map(read_run, run_dirs)}}
        for set_name in sets.names():
            cache = sets.cache(set_name, variant.slices)
            crops, rate = crops_of(run_dirs, cache, args.device)
            others = fixed["located" if set_name == "located" else "labelled"]
            judged = judge(crops, others, cache, run_priors)
            by_set[set_name].append(judged)
            row[set_name] = {**figures([judged]), "crops": crop_figures(judged),
                             "inference_images_per_s": rate}
        row["ratio"] = row["located"]["score"] / row["labelled"]["score"]
        for set_name in BOUNDED:
            row[f"{set_name} ÷ best"] = row[set_name]["score"] / best_score
        per_seed.append(row)
        terms = ", ".join(f"{term} " + " / ".join(f"{row[set_name][term]:.3f}" for set_name in sets.names())
                          for term in dict.fromkeys(TERM_OF[seq] for seq in args.sequences))
        print(f"{variant.name} | seed {seed}: score labelled {row['labelled']['score']:.4f}, located "
              f"{row['located']['score']:.4f} (best possible {best_score:.4f}), ratio {row['ratio']:.3f}; "
              f"{' / '.join(sets.names())}: {terms} (best epochs {row['best_epochs']})", flush=True)
    summary: dict[str, Any] = {set_name: {key: mean_sd([row[set_name][key] for row in per_seed])
                                          for key in ("score", *metrics.GROUPS, metrics.ANY_SEVERE)}
                               for set_name in sets.names()}
    for set_name in sets.names():
        summary[set_name]["crops"] = {
            seq: {key: mean_sd([row[set_name]["crops"][seq][key] for row in per_seed])
                  for key in ("balanced_accuracy", "wll_ratio")} for seq in args.sequences}
    summary["ratio"] = mean_sd([row["ratio"] for row in per_seed])
    summary["best"] = figures([sets.best])
    for set_name in BOUNDED:
        summary[f"{set_name} ÷ best"] = mean_sd([row[f"{set_name} ÷ best"] for row in per_seed])
    return {"variant": variant.name, "slices": variant.slices, "changes": variant.changes,
            "sequences": args.sequences, "seeds": per_seed, "summary": summary,
            "intervals": intervals({**by_set, "best": [sets.best]}, args.n_boot)}


def best_epoch(run_dir: Path) -> int:
    """The epoch of the run's best.pt."""
    return best_record(run_dir)["epoch"]


def fixed_crops(args: argparse.Namespace, sets: TestSets, train_cache: Path,
                runs: Path) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """The other sequences' three-slice default classifiers (trained once): their crops at the labelled
    and at the located points, and their training priors (none when every sequence is studied)."""
    others = [seq for seq in rsna.SEQUENCES if seq not in args.sequences]
    if not others:
        return {"labelled": pd.DataFrame(), "located": pd.DataFrame()}, {}
    dirs = [train_run(args, seq, train_cache, runs / f"fixed-{seq}-{args.fixed_seed}", args.fixed_seed, {})
            for seq in others]
    fixed_runs = [read_run(path) for path in dirs]
    crops = {name: crop_predictions(fixed_runs, open_cache(sets.cache(name, 3)), None,
                                    InferenceOptions(device=args.device))
             for name in ("labelled", "located")}
    return crops, sequence_priors(fixed_runs)


def table(results: list[dict[str, Any]], sets: list[str]) -> str:
    """The Markdown table: per variant, the score per set (mean ± sd over seeds, with the bootstrap
    interval at the labelled and located points), the best possible score, the labelled and located scores'
    ratios to it and the located ÷ labelled ratio (mean ± sd of the seeds' ratios, with the interval of the
    ratio of the seed-mean scores); the studied terms at the labelled and located points; the studied
    sequences' balanced accuracy."""
    sequences = results[0]["sequences"]
    terms = list(dict.fromkeys(TERM_OF[seq] for seq in sequences))
    ratios = [*(f"{name} ÷ best" for name in BOUNDED), "located ÷ labelled"]
    header = ["variant", *(f"score {name}" for name in sets), "best possible", *ratios,
              *(f"{term} {name}" for term in terms for name in BOUNDED),
              *(f"{seq} bal. acc." for seq in sequences)]
    rows = []
    for result in results:
        s, ci = result["summary"], result["intervals"]
        ci_of = {**{name: ci[name] for name in ratios[:2]}, "located ÷ labelled": ci["ratio"]}
        summary_of = {**{name: s[name] for name in ratios[:2]}, "located ÷ labelled": s["ratio"]}
        rows.append([result["variant"],
                     *(cell(s[name]["score"], 3, ci[name]["score"] if name in BOUNDED else None)
                       for name in sets),
                     f"{s['best']['score']:.3f}",
                     *(cell(summary_of[name], 3, ci_of[name]["value"]) for name in ratios),
                     *(cell(s[name][term]) for term in terms for name in BOUNDED),
                     *(cell(s["labelled"]["crops"][seq]["balanced_accuracy"], digits=2)
                       for seq in sequences)])
    return markdown_table(header, rows)


def speed_table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown table of every variant's model speed and peak memory."""
    rows = [[result["variant"], result["windows"], f"{result['speed']['train_images_per_s']:.0f}",
             f"{result['speed']['inference_images_per_s']:.0f}", f"{result['speed']['peak_memory_mb']:.0f}",
             f"{result['speed']['parameters_m']:.2f}"] for result in results]
    return (markdown_table(["variant", "backbone passes per item", "train img/s", "inference img/s",
                                   "peak MB", "parameters (M)"], rows)
            + f"\n\n{args.model}, {args.size} px, batch {args.speed_batch}, {args.device}, "
              f"{args.speed_steps} timed steps after one warm-up, a fresh process per model.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        variants = common.chosen(VARIANTS, args.variants)
    except LumbarFastError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.speed_only:
        results = [{"variant": variant.name, "slices": variant.slices, "windows": windows_of(variant),
                    "speed": speed(args, variant)} for variant in variants]
        common.report("multislice", args, {"speed": results}, speed_table(results, args))
        return
    sets = TestSets(args)
    sets.prepare()
    train_caches = {}
    for slices in sorted({3, *(variant.slices for variant in variants)}):
        train_caches[slices] = sets.folder / f"train-c{slices}.zarr"
        ingest(args.data, train_caches[slices], size=args.size, channels=slices, progress=False,
               workers=args.data_workers)
    runs = sets.folder / "runs"
    fixed, priors = fixed_crops(args, sets, train_caches[3], runs)
    results = [study_variant(args, variant, sets, fixed, priors, train_caches, runs) for variant in variants]
    common.report("multislice", args, {"results": results}, table(results, sets.names()))


if __name__ == "__main__":
    main()
