"""What the studies share: a variant of the default recipe and the data it trains on, training its runs,
judging a run's crops against its training prior, the mean ± standard deviation over seeds with its table
cell, and the JSON record (`benchmarks.common.report`, which the benchmarks write too)."""

from __future__ import annotations

import argparse
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from lumbar_fast import rsna
from lumbar_fast.classifier.config import TrainConfig
from lumbar_fast.classifier.runs import resume, train
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.metrics import classification_summary
from lumbar_fast.runfolder import LAST, RunFolder


@dataclass(frozen=True)
class Variant:
    """One cell of a study: TrainConfig changes from the default recipe, and the data it trains on."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    slices: int | None = None  # slices per level crop (ingest --channels); None: the study's own
    canonical_side: bool = True  # ingest's subarticular crop design
    signal: float = 1.0  # the phantom's signal strength
    sequences: tuple[str, ...] = tuple(rsna.SEQUENCES)  # the sequences it applies to


def chosen(variants: Sequence[Variant], names: str) -> list[Variant]:
    """The variants asked for by name (semicolon-separated), or all; a one-line error for an unknown one."""
    by_name = {variant.name: variant for variant in variants}
    if names == "all":
        return list(variants)
    unknown = [name for name in names.split(";") if name not in by_name]
    if unknown:
        raise LumbarFastError(f"unknown variant {unknown[0]!r}; choose from {'; '.join(by_name)}")
    return [by_name[name] for name in names.split(";")]


def train_run(run_dir: Path, settings: dict[str, Any], changes: dict[str, Any]) -> Path:
    """One run of the default recipe with `changes` (TrainConfig `settings`: sequence, cache, model, seed,
    ...): a folder with a last.pt is resumed (at once when finished), one without is started afresh."""
    if (run_dir / LAST).is_file():
        resume(run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # killed before its first epoch
        train(TrainConfig(**{**settings, "run_dir": str(run_dir), **changes}))
    return run_dir


def best_record(run_dir: Path) -> dict[str, Any]:
    """The metrics record of the run's best.pt epoch."""
    return [record for record in RunFolder(run_dir).read_metrics() if record["best"]][-1]


def judge(labels: np.ndarray, probs: np.ndarray, prior: np.ndarray) -> dict[str, Any]:
    """A run's figures on labelled crops: balanced accuracy, weighted log loss and its ratio to the training
    prior's (below 1: better than the prior), the items per class."""
    summary = classification_summary(labels, probs, prior)
    return {"balanced_accuracy": summary["balanced_accuracy"],
            "wll_ratio": summary["weighted_log_loss"] / summary["prior_weighted_log_loss"],
            "weighted_log_loss": summary["weighted_log_loss"], "support": summary["support"]}


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation over seeds (0 for a single value)."""
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def cell(stats: dict[str, float], digits: int = 3, interval: Sequence[float] | None = None) -> str:
    """A table cell: mean ± standard deviation, then the interval when given."""
    text = f"{stats['mean']:.{digits}f} ± {stats['sd']:.{digits}f}"
    return text + (f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else "")


def parser(description: str) -> argparse.ArgumentParser:
    """The options every study has: its work folder, its JSON record, and the processes that make its data."""
    result = common.base_parser(description, repeats=1)
    result.add_argument("--data-workers", type=int, help="processes of synth and ingest (default: theirs, "
                        "every core); 1 converts in-process, with no pool to start per cache")
    return result


def report(study: str, args: argparse.Namespace, results: dict[str, Any], table: str) -> dict[str, Any]:
    """Print the Markdown table; write the JSON record (hardware, versions, arguments, figures) if asked."""
    return common.report(study, args, results, table, package="benchmarks.studies")

