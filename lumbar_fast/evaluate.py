"""Validation reports of trained runs: each number beside its baseline, with bootstrap intervals over studies.

Per sequence, over the validation studies of its runs (the shared split; with runs for every fold, the
out-of-fold predictions of all studies): accuracy beside the majority class's, balanced accuracy, per-class
precision/recall, the confusion matrix, the weighted log loss beside the training prior's. With runs for all
three sequences, the competition score beside the prior-only submission's, computed on the rows `predict`
writes for those studies (rows without a crop hold the best constant prediction, as `predict --allow-prior`
fills them).
Locator runs, alone or beside classifier runs: per sequence, point error (median, p90), slice exact / within
±1 and right level name beside the mean-position baseline's, on the same footing (folds pooled out-of-fold).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumbar_fast import metrics, rsna
from lumbar_fast.cache import CacheReader, open_cache
from lumbar_fast.classifier.runs import ClassifierRun, read_run_split, read_runs, runs_by_sequence
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.ingest.plan import label_files
from lumbar_fast.loaders.gpu import resolve_device
from lumbar_fast.locator.metrics import LOCALISATION_FIGURES, summarise_localisation
from lumbar_fast.locator.runs import RunEvaluation, evaluate_run, locator_runs_apart
from lumbar_fast.phantom.answer_key import best_possible, gap_report
from lumbar_fast.plots import plot_confusions
from lumbar_fast.predict import (
    PROBABILITY_COLUMNS,
    InferenceOptions,
    check_runs,
    crop_predictions,
    fill_rows,
    location_probabilities,
    sequence_priors,
)
from lumbar_fast.report import (
    CONFUSION_PNG,
    LOCATOR_PREDICTIONS_CSV,
    PREDICTIONS_CSV,
    REPORT_JSON,
    REPORT_MD,
    SEQUENCE_ROWS,
    ClassifierReport,
    LocalisationReport,
    Report,
    ReportSettings,
    report_markdown,
)
from lumbar_fast.runfolder import atomic_write
from lumbar_fast.show import Panel, channels, prediction_caption, render_gallery
from lumbar_fast.split import require_studies, train_val_studies

PRIOR_COLUMNS: tuple[str, ...] = tuple(f"prior_{name}" for name in rsna.SUBMISSION_COLUMNS)
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
    return same_split({run.path: read_run_split(run) for run in runs})


def same_split(splits: dict[Path, pd.DataFrame]) -> pd.DataFrame:
    """The one split of several runs (path -> its split), sorted by study; different splits are refused."""
    (first, split), *others = [(path, table.sort_values("study_id").reset_index(drop=True))
                               for path, table in splits.items()]
    for path, other in others:
        if not split.equals(other):
            raise LumbarFastError(f"runs {first} and {path} were trained on different splits; "
                                  "evaluate runs of one split together")
    return split


def evaluation_cache(runs: Sequence[ClassifierRun], cache_path: Path | None) -> CacheReader:
    """`cache_path`, or the one cache the runs trained on (several: ask for --cache)."""
    if cache_path is None:
        caches = sorted({str(run.cache) for run in runs})
        if len(caches) > 1 and any(run.settings != runs[0].settings for run in runs):
            raise LumbarFastError(f"the runs trained on caches of different images ({', '.join(caches)}): no "
                                  "one cache fits them all; evaluate them in separate calls")
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
    return {run.path: require_studies(train_val_studies(split, run.fold)[1], known, cache.path, run.path)
            for run in runs}


def coverage(folds: Sequence[int], split: pd.DataFrame) -> str:
    """Which studies a sequence's runs validate: out-of-fold over all studies, or the named folds."""
    folds = sorted(folds)
    if folds == sorted(split["fold"].unique()):
        return f"out-of-fold, all {len(folds)} folds"
    return f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}"


# -- per-sequence figures --------------------------------------------------------------------------
def sequence_summary(y: np.ndarray, p: np.ndarray, prior: np.ndarray) -> dict[str, Any]:
    """classification_summary of labelled items; the prior's and the best constant's losses use each item's
    own run prior (folds of one sequence differ slightly in their training priors), the majority class their
    mean's."""
    summary = metrics.classification_summary(y, p, prior.mean(axis=0))
    labelled = y != rsna.MISSING
    summary["prior_weighted_log_loss"] = metrics.weighted_log_loss(y[labelled], prior[labelled])
    summary["constant_weighted_log_loss"] = metrics.weighted_log_loss(y[labelled],
                                                                      metrics.metric_optimal(prior[labelled]))
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
    """The competition losses on the studies every sequence validated, beside the prior-only submission's
    and the best constant one's (`metrics.metric_optimal` of the prior).

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
    p_prior = validating_priors(solution, crops, priors)
    predictions = {"score": p_model, "prior_score": p_prior,
                   "constant_score": metrics.metric_optimal(p_prior)}

    def scores(rows: np.ndarray, copies: np.ndarray) -> dict[str, float]:
        """Model and baseline scores of resampled rows, each drawn copy of a study a study of its own."""
        return {name: metrics.competition_losses(copies, conditions[rows], y[rows], p[rows])["score"]
                for name, p in predictions.items()}

    model, prior, constant = (metrics.competition_losses(study_ids, conditions, y, p)
                              for p in predictions.values())
    return {
        "studies": len(common), "filled_rows": int(filled.filled.sum()), "model": model, "prior": prior,
        "constant": constant,
        "intervals": metrics.bootstrap_intervals(study_ids, scores, options.n_boot, options.seed),
        "limits": phantom_limits(cache, common, model, prior),
    }


def validating_priors(solution: pd.DataFrame, crops: pd.DataFrame,
                      priors: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3): each submission row's prior baseline, the training prior of the run that validated its study
    and sequence (a run of another fold trained on that study: its prior would know the study's labels);
    the sequence's mean prior where the study has no crop of it."""
    sequences = solution["condition"].map(rsna.SEQUENCE_OF_CONDITION)
    own = crops.groupby(["study_id", "sequence"])[list(PRIOR_COLUMNS)].mean()
    keys = pd.MultiIndex.from_arrays([solution["study_id"], sequences])
    found = own.reindex(keys).to_numpy(dtype=np.float64)
    fallback = np.stack([priors[seq] for seq in sequences])
    return np.where(np.isnan(found), fallback, found)


def phantom_limits(cache: CacheReader, studies: np.ndarray, model: dict[str, float],
                   prior: dict[str, float]) -> dict[str, Any] | None:
    """On a real-difficulty phantom (an answer key beside the cache's labels file): the best possible score
    of these studies and the share of the prior → best gap the model closes, per term; else None."""
    labels_path = label_files(cache.settings())[0]
    best = best_possible(labels_path, studies) if labels_path is not None else None
    return None if best is None else gap_report(model, prior, best)


# -- localisation (locator runs) ------------------------------------------------------------------
def evaluate_locators(paths: Sequence[Path], cache_path: Path | None,
                      options: EvaluateOptions) -> tuple[LocalisationReport, pd.DataFrame]:
    """Per sequence, the locator runs' localisation figures on their validation studies (folds pooled
    out-of-fold) beside the mean-position baseline's, with intervals; and the located points table."""
    evaluations = [evaluate_run(path, cache_path, options.inference.device) for path in paths]
    seen: dict[tuple[str, int], Path] = {}
    for ev in evaluations:
        if (ev.sequence, ev.fold) in seen:
            raise LumbarFastError(f"locator runs {seen[ev.sequence, ev.fold]} and {ev.path} are both "
                                  f"{ev.sequence} fold {ev.fold}; give each once")
        seen[ev.sequence, ev.fold] = ev.path
    sequences = {}
    for seq in rsna.SEQUENCES:
        group = [ev for ev in evaluations if ev.sequence == seq]
        if group:
            split = same_split({ev.path: ev.split for ev in group})
            sequences[seq] = {"coverage": coverage([ev.fold for ev in group], split),
                              **localisation_figures(group, options)}
    runs = [{"path": str(ev.path), "sequence": ev.sequence, "fold": ev.fold} for ev in evaluations]
    return LocalisationReport(runs, sequences), located_points(evaluations)


def localisation_figures(group: Sequence[RunEvaluation], options: EvaluateOptions) -> dict[str, Any]:
    """Model and baseline summaries of one sequence's pooled point tables, with bootstrap intervals over
    studies (a drawn study brings its model and its baseline points)."""
    model = pd.concat([ev.points for ev in group], ignore_index=True)
    baseline = pd.concat([ev.baseline_points for ev in group], ignore_index=True)
    if model.empty:
        raise LumbarFastError(f"the {group[0].sequence} locator runs located no labelled point")
    both = pd.concat([model, baseline], ignore_index=True)
    is_model = np.arange(len(both)) < len(model)

    def statistics(rows: np.ndarray, _copies: np.ndarray) -> dict[str, float]:
        drawn = {name: summarise_localisation(both.iloc[rows[picked]])
                 for name, picked in (("model", is_model[rows]), ("baseline", ~is_model[rows]))}
        return {f"{name}.{key}": summary[key] for name, summary in drawn.items()
                for key in LOCALISATION_FIGURES}

    intervals = metrics.bootstrap_intervals(both["study_id"].to_numpy(), statistics, options.n_boot,
                                            options.seed)
    return {"studies": int(model["study_id"].nunique()), "model": summarise_localisation(model),
            "baseline": summarise_localisation(baseline),
            "intervals": {name: {key: intervals[f"{name}.{key}"] for key in LOCALISATION_FIGURES}
                          for name in ("model", "baseline")}}


def located_points(evaluations: Sequence[RunEvaluation]) -> pd.DataFrame:
    """Every run's located points with its sequence and fold, and each labelled point's errors."""
    keys = ["study_id", "series_id", "condition", "level"]
    return pd.concat([ev.predictions.assign(sequence=ev.sequence, fold=ev.fold)
                      .merge(ev.points, on=keys, how="left") for ev in evaluations], ignore_index=True)


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


# -- the command's work ----------------------------------------------------------------------------
def evaluate(run_paths: Sequence[Path], out_dir: Path, cache_path: Path | None = None,
             options: EvaluateOptions | None = None) -> Report:
    """Evaluate classifier and locator runs (either or both) on their validation studies and write
    report.md and report.json to `out_dir`, with the classifiers' predictions.csv and pictures and the
    locators' locator_predictions.csv; returns the report."""
    options = options or EvaluateOptions()
    if not run_paths:
        raise LumbarFastError("give at least one run folder")
    classifier_paths, locator_paths = locator_runs_apart(run_paths)
    earlier_report = (out_dir / REPORT_JSON).is_file()  # its files may be pruned; no one else's
    located = evaluate_locators(locator_paths, cache_path, options) if locator_paths else None
    classifiers = (evaluate_classifiers(classifier_paths, out_dir, cache_path, options) if classifier_paths
                   else None)
    report = Report(report_settings(options), classifiers, located[0] if located else None)
    if located is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / LOCATOR_PREDICTIONS_CSV, lambda tmp: located[1].to_csv(tmp, index=False))
    record = json.dumps(report.record(), indent=2) + "\n"
    atomic_write(out_dir / REPORT_JSON, lambda tmp: tmp.write_text(record))
    atomic_write(out_dir / REPORT_MD, lambda tmp: tmp.write_text(report_markdown(report)))
    if earlier_report:
        remove_stale_files(out_dir, report)
    return report


def remove_stale_files(out_dir: Path, report: Report) -> None:
    """Once the new report is written over an earlier one: remove what that report wrote and this one did not
    (another sequence's gallery, the other kind of runs' predictions), so the folder holds one report."""
    kept = set(report.classifiers.galleries.values()) if report.classifiers else set()
    stale = [path for path in out_dir.glob("most_wrong_*.png") if path.name not in kept]
    if report.classifiers is None:
        stale += [out_dir / PREDICTIONS_CSV, out_dir / CONFUSION_PNG]
    if report.localisation is None:
        stale.append(out_dir / LOCATOR_PREDICTIONS_CSV)
    for path in stale:
        path.unlink(missing_ok=True)


def report_settings(options: EvaluateOptions) -> ReportSettings:
    """The report's bootstrap and inference settings."""
    return ReportSettings(replicates=options.n_boot, seed=options.seed,
                          device=str(resolve_device(options.inference.device)), tta=options.inference.tta)


def evaluate_classifiers(run_paths: Sequence[Path], out_dir: Path, cache_path: Path | None,
                         options: EvaluateOptions) -> ClassifierReport:
    """Predict the classifier runs' validation studies, write predictions.csv, the confusion matrices and
    the most-wrong galleries to `out_dir`; returns the classifier report."""
    runs = read_runs(run_paths)
    split = common_split(runs)
    cache = evaluation_cache(runs, cache_path)
    check_runs(runs, cache)
    studies = validation_studies(runs, split, cache)
    crops = crop_predictions(runs, cache, studies, options.inference)
    groups = runs_by_sequence(runs)
    sequences = {}
    for seq, group in groups.items():
        sequences[seq] = {"coverage": coverage([run.fold for run in group], split),
                          **evaluate_sequence(crops[crops["sequence"] == seq], options)}
    out_dir.mkdir(parents=True, exist_ok=True)
    galleries = {}
    for seq in groups:
        galleries[seq] = f"most_wrong_{seq}.png"
        most_wrong_gallery(crops[crops["sequence"] == seq].reset_index(drop=True), cache, seq,
                           options.gallery_items, out_dir / galleries[seq])
    report = ClassifierReport(
        cache=str(cache.path), sequences=sequences, galleries=galleries,
        runs=[{"path": str(r.path), "sequence": r.sequence, "fold": r.fold} for r in runs],
        competition=competition(crops, cache, runs, studies, options))
    plot_confusions(sequences, out_dir / CONFUSION_PNG)
    table = crops.drop(columns="crop_row")
    atomic_write(out_dir / PREDICTIONS_CSV, lambda tmp: table.to_csv(tmp, index=False))
    return report
