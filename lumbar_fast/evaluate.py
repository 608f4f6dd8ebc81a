"""Validation reports of trained runs: each number beside its baseline, with bootstrap intervals over studies.

Per sequence, over the validation studies of its runs (the shared split; with runs for every fold, the
out-of-fold predictions of all studies): accuracy beside the majority class's, balanced accuracy, per-class
precision/recall, the confusion matrix, the weighted log loss beside the training prior's. With runs for all
three sequences, the competition score beside the prior-only submission's, computed on the rows `predict`
writes for those studies (rows without a crop hold the prior, as `predict --allow-prior` fills them).
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_fast import metrics, rsna
from lumbar_fast.cache import CacheReader, open_cache
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.inference import resolve_device
from lumbar_fast.predict import (
    PROBABILITY_COLUMNS,
    ClassifierRun,
    InferenceOptions,
    crop_predictions,
    fill_rows,
    location_probabilities,
    read_run_split,
    read_runs,
    runs_by_sequence,
    sequence_priors,
)
from lumbar_fast.runfolder import atomic_write
from lumbar_fast.show import Panel, channels, prediction_caption, render_gallery

ORACLE_NOTE = ("Crops were placed at the labelled coordinates (oracle localisation), so these numbers are "
               "not comparable with leaderboard scores of two-stage solutions, which must find the levels "
               "first.")
NO_COMPETITION = ("competition score: not computed; it needs runs of all three sequences that validate the "
                  "same studies (the same folds)")
PRIOR_COLUMNS: tuple[str, ...] = tuple(f"prior_{name}" for name in rsna.SUBMISSION_COLUMNS)
#: per-sequence figures that get a bootstrap interval, with their row names in the tables (baselines indented)
SEQUENCE_ROWS: dict[str, str] = {
    "accuracy": "accuracy",
    "majority_accuracy": "  majority class",
    "balanced_accuracy": "balanced accuracy",
    "weighted_log_loss": "weighted log loss",
    "prior_weighted_log_loss": "  training prior",
}
REPORT_MD, REPORT_JSON, PREDICTIONS_CSV, CONFUSION_PNG = "report.md", "report.json", "predictions.csv", \
    "confusion.png"


@dataclass(frozen=True)
class EvaluateOptions:
    """Inference settings, bootstrap replicates and seed, and how many items the most-wrong gallery shows."""

    inference: InferenceOptions = field(default_factory=InferenceOptions)
    n_boot: int = 1000
    seed: int = 0
    gallery_items: int = 12


# -- runs, split, cache ----------------------------------------------------------------------------
def common_split(runs: Sequence[ClassifierRun]) -> pd.DataFrame:
    """The study-level split every run trained on; runs of different splits cannot be evaluated together."""
    split = read_run_split(runs[0])
    for run in runs[1:]:
        if not split.equals(read_run_split(run)):
            raise LumbarFastError(f"runs {runs[0].path} and {run.path} were trained on different splits; "
                                  "evaluate runs of one split together")
    return split


def evaluation_cache(runs: Sequence[ClassifierRun], cache_path: Path | None) -> CacheReader:
    """`cache_path`, or the one cache the runs trained on (several: ask for --cache)."""
    if cache_path is None:
        caches = sorted({str(run.cache) for run in runs})
        if len(caches) > 1:
            raise LumbarFastError(f"the runs trained on different caches ({', '.join(caches)}); give --cache")
        cache_path = Path(caches[0])
        if not cache_path.exists():
            raise LumbarFastError(f"the runs' cache {cache_path} does not exist (moved, or a path relative "
                                  "to another folder?); give --cache")
    return open_cache(cache_path)


def validation_studies(runs: Sequence[ClassifierRun], split: pd.DataFrame,
                       cache: CacheReader) -> dict[Path, np.ndarray]:
    """Each run's validation studies (its fold of the split), all of which the cache must hold."""
    known = cache.study_labels()["study_id"].to_numpy()
    studies = {}
    for run in runs:
        fold = split.loc[split["fold"] == run.fold, "study_id"].to_numpy(dtype=np.int64)
        absent = np.setdiff1d(fold, known)
        if len(absent):
            raise LumbarFastError(f"cache {cache.path} lacks {len(absent)} validation studies of run "
                                  f"{run.path} (e.g. {absent[0]}); evaluate on the cache the run trained on")
        studies[run.path] = fold
    return studies


def coverage(runs: Sequence[ClassifierRun], split: pd.DataFrame) -> str:
    """Which studies a sequence's runs validate: out-of-fold over all studies, or the named folds."""
    folds = sorted(run.fold for run in runs)
    if folds == sorted(split["fold"].unique()):
        return f"out-of-fold, all {len(folds)} folds"
    return f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}"


# -- per-sequence figures --------------------------------------------------------------------------
def sequence_summary(y: np.ndarray, p: np.ndarray, prior: np.ndarray) -> dict[str, Any]:
    """classification_summary of labelled items; the prior's loss uses each item's own run prior (folds of
    one sequence differ slightly in training class frequencies), the majority class their mean's."""
    summary = metrics.classification_summary(y, p, prior.mean(axis=0))
    labelled = y != rsna.MISSING
    summary["prior_weighted_log_loss"] = metrics.weighted_log_loss(y[labelled], prior[labelled])
    return summary


def evaluate_sequence(crops: pd.DataFrame, options: EvaluateOptions) -> dict[str, Any]:
    """Summary and intervals of one sequence's labelled crop predictions."""
    labelled = crops[crops["severity"] != rsna.MISSING]
    if labelled.empty:
        raise LumbarFastError("no labelled validation crops to evaluate")
    y = labelled["severity"].to_numpy(dtype=np.int64)
    p = labelled[list(PROBABILITY_COLUMNS)].to_numpy(dtype=np.float64)
    prior = labelled[list(PRIOR_COLUMNS)].to_numpy(dtype=np.float64)
    summary = sequence_summary(y, p, prior)

    def statistics(rows: np.ndarray, _copies: np.ndarray) -> dict[str, float]:
        resampled = sequence_summary(y[rows], p[rows], prior[rows])
        return {name: resampled[name] for name in SEQUENCE_ROWS}

    intervals = metrics.bootstrap_intervals(labelled["study_id"].to_numpy(), statistics, options.n_boot,
                                            options.seed)
    return {"studies": int(labelled["study_id"].nunique()), **summary, "intervals": intervals}


# -- the competition score -------------------------------------------------------------------------
def competition(crops: pd.DataFrame, cache: CacheReader, runs: Sequence[ClassifierRun],
                studies: dict[Path, np.ndarray], options: EvaluateOptions) -> dict[str, Any] | None:
    """The competition losses on the studies every sequence validated, beside the prior-only submission's.

    The rows are those `predict` writes (crops averaged per location, rows without a crop → the prior).
    None when a sequence has no run or the sequences share no validation study.
    """
    groups = runs_by_sequence(runs)
    if len(groups) < len(rsna.SEQUENCES):
        return None
    per_sequence = [np.concatenate([studies[run.path] for run in group]) for group in groups.values()]
    common = np.unique(per_sequence[0])
    for other in per_sequence[1:]:
        common = np.intersect1d(common, other)
    if len(common) == 0:
        return None
    labels = cache.study_labels()
    solution = metrics.labels_to_rows(labels[labels["study_id"].isin(common)])
    priors = sequence_priors(runs)
    filled = fill_rows(solution, location_probabilities(crops[crops["study_id"].isin(common)]), priors)
    study_ids, conditions = solution["study_id"].to_numpy(), solution["condition"].to_numpy()
    y = solution["severity"].to_numpy(dtype=np.int64)
    p_model = filled.probabilities
    p_prior = np.stack([priors[rsna.SEQUENCE_OF_CONDITION[c]] for c in conditions])

    def scores(rows: np.ndarray, copies: np.ndarray) -> dict[str, float]:
        """Model and prior scores of resampled rows, each drawn copy of a study a study of its own."""
        return {name: metrics.competition_losses(copies, conditions[rows], y[rows], p[rows])["score"]
                for name, p in (("score", p_model), ("prior_score", p_prior))}

    return {
        "studies": len(common), "filled_rows": int(filled.filled.sum()),
        "model": metrics.competition_losses(study_ids, conditions, y, p_model),
        "prior": metrics.competition_losses(study_ids, conditions, y, p_prior),
        "intervals": metrics.bootstrap_intervals(study_ids, scores, options.n_boot, options.seed),
    }


# -- pictures --------------------------------------------------------------------------------------
def item_losses(crops: pd.DataFrame) -> np.ndarray:
    """Each crop's term of the weighted log loss, w[y]·(−log p[y]); NaN for unlabelled crops."""
    y = crops["severity"].to_numpy(dtype=np.int64)
    p = metrics.clip_normalise(crops[list(PROBABILITY_COLUMNS)].to_numpy(dtype=np.float64))
    labelled = y != rsna.MISSING
    losses = np.full(len(y), np.nan)
    picked = p[np.flatnonzero(labelled), y[labelled]]
    losses[labelled] = np.asarray(rsna.CLASS_WEIGHTS)[y[labelled]] * -np.log(picked)
    return losses


def most_wrong_gallery(crops: pd.DataFrame, cache: CacheReader, sequence: str, n: int, out_png: Path) -> None:
    """A gallery of the sequence's `n` validation crops with the highest loss: every channel of each crop,
    captioned with study, condition, level, truth and predicted probabilities."""
    losses = item_losses(crops)
    labelled = int(np.isfinite(losses).sum())
    worst = np.argsort(-np.nan_to_num(losses, nan=-np.inf), kind="stable")[:min(n, labelled)]
    images = np.load(cache.array_path(sequence, "levels"), mmap_mode="r")
    panels = []
    for index in worst:
        item = crops.iloc[index]
        caption = (f"{item.study_id} {rsna.CONDITION_TITLES[item.condition]} {rsna.LEVEL_TITLES[item.level]}",
                   *prediction_caption(int(item.severity), item[list(PROBABILITY_COLUMNS)].tolist()),
                   f"loss {losses[index]:.2f}")
        panels.append(Panel(channels(np.asarray(images[item.crop_row])), caption))
    title = f"{sequence}: the {len(panels)} validation crops with the highest weighted log loss"
    render_gallery(panels, out_png, title=title)


def plot_confusions(summaries: dict[str, dict[str, Any]], out_png: Path) -> None:
    """One confusion matrix (rows true, columns predicted, counts) per sequence, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(3.6 * len(summaries), 3.4), squeeze=False)
    for ax, (sequence, summary) in zip(axes[0], summaries.items(), strict=True):
        confusion = np.asarray(summary["confusion"])
        ax.imshow(confusion, cmap="Blues")
        for (row, column), count in np.ndenumerate(confusion):
            colour = "white" if count > confusion.max() / 2 else "black"
            ax.text(column, row, str(count), ha="center", va="center", color=colour)
        ticks = range(len(rsna.SEVERITIES))
        ax.set_xticks(ticks, rsna.SEVERITIES, fontsize=8)
        ax.set_yticks(ticks, rsna.SEVERITIES, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(sequence)
    fig.tight_layout()
    atomic_write(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


# -- tables and report -----------------------------------------------------------------------------
def with_interval(value: float, interval: Sequence[float], digits: int = 3) -> str:
    """'0.912 [0.880, 0.940]'."""
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def sequence_table(report: dict[str, Any]) -> list[list[str]]:
    """The main table as rows of cells: a column per sequence, each baseline under its metric."""
    sequences = report["sequences"]
    rows = [["metric", *sequences],
            ["validated", *(s["coverage"] for s in sequences.values())],
            ["items (studies)", *(f"{s['n']} ({s['studies']})" for s in sequences.values())]]
    for key, name in SEQUENCE_ROWS.items():
        rows.append([name, *(with_interval(s[key], s["intervals"][key]) for s in sequences.values())])
    return rows


def competition_line(score: dict[str, Any]) -> str:
    """The competition score beside the prior-only submission's, in one line."""
    return (f"competition score {with_interval(score['model']['score'], score['intervals']['score'])}, "
            f"prior only {with_interval(score['prior']['score'], score['intervals']['prior_score'])} "
            f"({score['studies']} studies)")


def format_report(report: dict[str, Any]) -> str:
    """What `evaluate` prints: the oracle note, the per-sequence table and the competition score."""
    lines = [*textwrap.wrap(f"note: {ORACLE_NOTE}", 100), "", format_table(sequence_table(report))]
    score = report["competition"]
    lines += ["", NO_COMPETITION if score is None else competition_line(score)]
    return "\n".join(lines)


def format_table(rows: list[list[str]]) -> str:
    """Rows of cells (all of one length) as aligned plain-text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _baseline_name(name: str) -> str:
    """A row name for Markdown, where indentation is lost: baselines (indented names) get an arrow."""
    return f"↳ {name.strip()}" if name.startswith(" ") else name


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def class_tables(sequence: str, summary: dict[str, Any]) -> str:
    """Per-class support, precision, recall and the confusion matrix of one sequence, in Markdown."""
    per_class = markdown_table(
        ["class", "support", "precision", "recall"],
        [[name, summary["support"][i], _ratio(summary["precision"][i]), _ratio(summary["recall"][i])]
         for i, name in enumerate(rsna.SEVERITIES)])
    confusion = markdown_table(["true \\ predicted", *rsna.SEVERITIES],
                               [[name, *row] for name, row in zip(rsna.SEVERITIES, summary["confusion"],
                                                                  strict=True)])
    return f"### {sequence}\n\n{per_class}\n\n{confusion}\n"


def competition_markdown(score: dict[str, Any] | None) -> str:
    """The four competition losses and the score, model beside the prior-only submission (or why not)."""
    if score is None:
        return f"## Competition score\n\n{NO_COMPETITION}\n"
    terms = [*metrics.GROUPS, metrics.ANY_SEVERE]
    rows = [[term, f"{score['model'][term]:.4f}", f"{score['prior'][term]:.4f}"] for term in terms]
    rows.append(["**score**", with_interval(score["model"]["score"], score["intervals"]["score"], 4),
                 with_interval(score["prior"]["score"], score["intervals"]["prior_score"], 4)])
    filled = (f" {score['filled_rows']} rows had no crop and hold the training prior, as "
              "`predict --allow-prior` fills them." if score["filled_rows"] else "")
    return (f"## Competition score\n\nOver the {score['studies']} studies validated by all three sequences, "
            f"on the rows `predict` writes for them.{filled}\n\n"
            + markdown_table(["term", "model", "prior only"], rows) + "\n")


def report_markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    table = sequence_table(report)
    runs = markdown_table(["run", "sequence", "fold"],
                          [[f"`{r['path']}`", r["sequence"], r["fold"]] for r in report["runs"]])
    parts = [
        "# lumbar-fast evaluate", f"> {ORACLE_NOTE}",
        f"Cache `{report['cache']}`. Intervals: bootstrap {report['bootstrap']['confidence']:.0%} over "
        f"studies ({report['bootstrap']['replicates']} replicates, seed {report['bootstrap']['seed']}). "
        "The baselines: the majority class and the training class frequencies (the prior) predicted for "
        f"every item. Predicted on {report['inference']['device']}"
        f"{', averaged with the horizontal mirror (--tta)' if report['inference']['tta'] else ''}.",
        runs, "## Per sequence",
        markdown_table(table[0], [[_baseline_name(row[0]), *row[1:]] for row in table[1:]]),
        f"![confusion matrices]({CONFUSION_PNG})",
        *(class_tables(seq, summary) for seq, summary in report["sequences"].items()),
    ]
    parts.append(competition_markdown(report["competition"]))
    parts.append("## Most wrong validation crops\n\n"
                 + "\n".join(f"![{seq}]({name})" for seq, name in report["galleries"].items()))
    return "\n\n".join(parts) + "\n"


# -- the command's work ----------------------------------------------------------------------------
def evaluate(run_paths: Sequence[Path], out_dir: Path, cache_path: Path | None = None,
             options: EvaluateOptions | None = None) -> dict[str, Any]:
    """Predict the runs' validation studies and write report.md, report.json, predictions.csv, the confusion
    matrices and the most-wrong galleries to `out_dir`; returns the report's content."""
    options = options or EvaluateOptions()
    runs = read_runs(run_paths)
    split = common_split(runs)
    cache = evaluation_cache(runs, cache_path)
    studies = validation_studies(runs, split, cache)
    crops = crop_predictions(runs, cache, studies, options.inference)
    groups = runs_by_sequence(runs)
    sequences = {}
    for seq, group in groups.items():
        sequences[seq] = {"coverage": coverage(group, split),
                          **evaluate_sequence(crops[crops["sequence"] == seq], options)}
    out_dir.mkdir(parents=True, exist_ok=True)
    galleries = {}
    for seq in groups:
        galleries[seq] = f"most_wrong_{seq}.png"
        most_wrong_gallery(crops[crops["sequence"] == seq].reset_index(drop=True), cache, seq,
                           options.gallery_items, out_dir / galleries[seq])
    report = {
        "note": ORACLE_NOTE, "cache": str(cache.path),
        "runs": [{"path": str(r.path), "sequence": r.sequence, "fold": r.fold} for r in runs],
        "bootstrap": {"replicates": options.n_boot, "seed": options.seed, "confidence": 0.95},
        "inference": {"device": str(resolve_device(options.inference.device)), "tta": options.inference.tta},
        "sequences": sequences, "competition": competition(crops, cache, runs, studies, options),
        "galleries": galleries,
    }
    plot_confusions(sequences, out_dir / CONFUSION_PNG)
    table = crops.drop(columns="crop_row")
    atomic_write(out_dir / PREDICTIONS_CSV, lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out_dir / REPORT_JSON, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    atomic_write(out_dir / REPORT_MD, lambda tmp: tmp.write_text(report_markdown(report)))
    return report
