"""What `evaluate` reports, typed (`Report`: the classifier part, the localisation part, the settings), and
how it reads: the plain-text tables it prints and report.md. `markdown_table` is the one Markdown table
writer (the benchmarks and studies use it too)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lumbar_fast import metrics, rsna

ORACLE_NOTE = ("Crops were placed at the labelled coordinates (oracle localisation), so these numbers are "
               "not comparable with leaderboard scores of two-stage solutions, which must find the levels "
               "first.")
NO_COMPETITION = ("competition score: not computed; it needs runs of all three sequences that validate the "
                  "same studies (the same folds)")
#: per-sequence figures that get a bootstrap interval, with their row names in the tables (baselines indented)
SEQUENCE_ROWS: dict[str, str] = {
    "accuracy": "accuracy",
    "majority_accuracy": "  majority class",
    "balanced_accuracy": "balanced accuracy",
    "weighted_log_loss": "weighted log loss",
    "prior_weighted_log_loss": "  training prior",
    "constant_weighted_log_loss": "  best constant",
}
#: localisation figures with their row names in the tables; each is followed by the baseline's row
LOCALISATION_ROWS: dict[str, str] = {
    "point_error_median_mm": "point error median (mm)",
    "point_error_p90_mm": "point error p90 (mm)",
    "slice_exact": "slice exact",
    "slice_within_1": "slice within ±1",
    "level_name_accuracy": "right level name",
}
LOCALISATION_NOTE = ("Each locator run's best checkpoint on its validation studies (folds pooled "
                     "out-of-fold), beside the mean-position baseline trained on its training studies.")
#: the report's note on --tta, which averages over the mirror only where the training flipped
TTA_NOTE = ", runs trained with horizontal flips averaged with the horizontal mirror (--tta)"
REPORT_MD, REPORT_JSON, PREDICTIONS_CSV, CONFUSION_PNG = "report.md", "report.json", "predictions.csv", \
    "confusion.png"
LOCATOR_PREDICTIONS_CSV = "locator_predictions.csv"


@dataclass(frozen=True)
class ReportSettings:
    """How the report's numbers were made: bootstrap replicates, seed and confidence; device and --tta."""

    replicates: int
    seed: int
    device: str
    tta: bool
    confidence: float = 0.95

    def record(self) -> dict[str, Any]:
        """report.json's `bootstrap` and `inference` entries."""
        bootstrap = {"replicates": self.replicates, "seed": self.seed, "confidence": self.confidence}
        return {"bootstrap": bootstrap, "inference": {"device": self.device, "tta": self.tta}}


@dataclass(frozen=True)
class ClassifierReport:
    """The classifier runs' part: per sequence the figures with their intervals (`sequences[seq]`: coverage,
    studies, n, the classification summary and `intervals`), the competition score (None when it cannot be
    computed) and the most-wrong galleries' file names."""

    cache: str
    runs: list[dict[str, Any]]  # path, sequence, fold
    sequences: dict[str, dict[str, Any]]
    competition: dict[str, Any] | None
    galleries: dict[str, str]


@dataclass(frozen=True)
class LocalisationReport:
    """The locator runs' part: per sequence the model's and the baseline's figures with intervals."""

    runs: list[dict[str, Any]]  # path, sequence, fold
    sequences: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Report:
    """Everything `evaluate` found: classifier runs, locator runs, or both."""

    settings: ReportSettings
    classifiers: ClassifierReport | None = None
    localisation: LocalisationReport | None = None

    def record(self) -> dict[str, Any]:
        """report.json's content."""
        record: dict[str, Any] = {}
        if self.classifiers is not None:
            part = self.classifiers
            record = {"note": ORACLE_NOTE, "cache": part.cache, "runs": part.runs}
        record.update(self.settings.record())
        if self.classifiers is not None:
            record.update(sequences=part.sequences, competition=part.competition, galleries=part.galleries)
        if self.localisation is not None:
            located = self.localisation
            record["localisation"] = {"runs": located.runs, "sequences": located.sequences}
        return record


# -- cells and tables ------------------------------------------------------------------------------
def with_interval(value: float, interval: Sequence[float], digits: int = 3) -> str:
    """'0.912 [0.880, 0.940]'."""
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def table_head(first: str, sequences: dict[str, dict[str, Any]], count_name: str,
               count: Callable[[dict[str, Any]], int]) -> list[list[str]]:
    """A per-sequence table's first rows: the sequences, what their runs validate, and the counts."""
    return [[first, *sequences], ["validated", *(s["coverage"] for s in sequences.values())],
            [count_name, *(f"{count(s)} ({s['studies']})" for s in sequences.values())]]


def sequence_rows(part: ClassifierReport) -> list[list[str]]:
    """The main table as rows of cells: a column per sequence, each baseline under its metric."""
    sequences = part.sequences
    rows = table_head("metric", sequences, "items (studies)", lambda s: s["n"])
    for key, name in SEQUENCE_ROWS.items():
        rows.append([name, *(with_interval(s[key], s["intervals"][key]) for s in sequences.values())])
    return rows


def localisation_rows(part: LocalisationReport) -> list[list[str]]:
    """The localisation table as rows of cells: a column per sequence, the baseline under each figure."""
    sequences = part.sequences
    rows = table_head("figure", sequences, "points (studies)", lambda s: s["model"]["points"])
    for key, name in LOCALISATION_ROWS.items():
        digits = 2 if key.endswith("_mm") else 3
        for who, row_name in (("model", name), ("baseline", "  mean-position baseline")):
            rows.append([row_name, *(with_interval(s[who][key], s["intervals"][who][key], digits)
                                     for s in sequences.values())])
    return rows


def format_table(rows: list[list[str]]) -> str:
    """Rows of cells (all of one length) as aligned plain-text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _markdown_rows(rows: list[list[str]]) -> str:
    """Rows of cells (the first the header) as Markdown, where indentation is lost: baselines (indented
    names) get an arrow."""
    return markdown_table(rows[0], [[f"↳ {row[0].strip()}" if row[0].startswith(" ") else row[0], *row[1:]]
                                    for row in rows[1:]])


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# -- what evaluate prints --------------------------------------------------------------------------
def competition_line(score: dict[str, Any]) -> str:
    """The competition score beside the prior-only and the best constant submissions' and, on a
    real-difficulty phantom, the best possible one and the share of the gap closed, in one line."""
    intervals = score["intervals"]
    line = (f"competition score {with_interval(score['model']['score'], intervals['score'])}, "
            f"prior only {with_interval(score['prior']['score'], intervals['prior_score'])}, "
            f"best constant {with_interval(score['constant']['score'], intervals['constant_score'])}")
    limits = score.get("limits")
    if limits is not None:
        line += f", best possible {limits['best_possible']:.3f} (gap closed {_share(limits['gap_closed'])})"
    return f"{line} ({score['studies']} studies)"


def _share(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def format_report(report: Report) -> str:
    """What `evaluate` prints: the oracle note, the per-sequence table and the competition score (classifier
    runs), then the localisation table (locator runs)."""
    lines = []
    if report.classifiers is not None:
        lines += [*textwrap.wrap(f"note: {ORACLE_NOTE}", 100), "",
                  format_table(sequence_rows(report.classifiers))]
        score = report.classifiers.competition
        lines += ["", NO_COMPETITION if score is None else competition_line(score)]
    if report.localisation is not None:
        lines += ["", "Localisation", format_table(localisation_rows(report.localisation))]
    return "\n".join(lines).lstrip("\n")


def written_files(report: Report) -> str:
    """What `evaluate` wrote besides report.md, for the closing line."""
    files = [REPORT_JSON]
    if report.classifiers is not None:
        files += [PREDICTIONS_CSV, "pictures"]
    if report.localisation is not None:
        files.append(LOCATOR_PREDICTIONS_CSV)
    return ", ".join(files)


# -- report.md -------------------------------------------------------------------------------------
def report_markdown(report: Report) -> str:
    """The whole report as Markdown: the classifier part, then the localisation section."""
    parts = (classifier_markdown(report.classifiers, report.settings) if report.classifiers is not None
             else ["# lumbar-fast evaluate"])
    if report.localisation is not None:
        parts.append(localisation_markdown(report.localisation, report.settings))
    return "\n\n".join(parts) + "\n"


def _intervals_note(settings: ReportSettings) -> str:
    return (f"Intervals: bootstrap {settings.confidence:.0%} over studies ({settings.replicates} replicates, "
            f"seed {settings.seed}).")


def classifier_markdown(part: ClassifierReport, settings: ReportSettings) -> list[str]:
    """The classifier runs' part of the report: note, runs, per-sequence tables, score, galleries."""
    runs = markdown_table(["run", "sequence", "fold"],
                          [[f"`{r['path']}`", r["sequence"], r["fold"]] for r in part.runs])
    parts = [
        "# lumbar-fast evaluate", f"> {ORACLE_NOTE}",
        f"Cache `{part.cache}`. {_intervals_note(settings)} "
        "The baselines: the majority class, the training prior (class shares, one pseudo-count each) and "
        "the best constant prediction (the prior reweighted as the metric weighs the grades, "
        "q ∝ (1, 2, 4)·prior), each predicted for every item. "
        f"Predicted on {settings.device}{TTA_NOTE if settings.tta else ''}.",
        runs, "## Per sequence", _markdown_rows(sequence_rows(part)),
        f"![confusion matrices]({CONFUSION_PNG})",
        *(class_tables(seq, summary) for seq, summary in part.sequences.items()),
    ]
    parts.append(competition_markdown(part.competition))
    parts.append("## Most wrong validation crops\n\n"
                 + "\n".join(f"![{seq}]({name})" for seq, name in part.galleries.items()))
    return parts


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
    """The four competition losses and the score, model beside the prior-only and the best constant
    submissions (or why not)."""
    if score is None:
        return f"## Competition score\n\n{NO_COMPETITION}\n"
    terms = [*metrics.GROUPS, metrics.ANY_SEVERE]
    limits = score.get("limits")
    columns = ("model", "prior", "constant")
    rows = [[term, *(f"{score[name][term]:.4f}" for name in columns), *_limit_cells(limits, term)]
            for term in terms]
    intervals = (score["intervals"][name] for name in ("score", "prior_score", "constant_score"))
    rows.append(["**score**", *(with_interval(score[name]["score"], interval, 4)
                                for name, interval in zip(columns, intervals, strict=True)),
                 *_limit_cells(limits, "score")])
    filled = (f" {score['filled_rows']} rows had no crop and hold the best constant prediction, as "
              "`predict --allow-prior` fills them." if score["filled_rows"] else "")
    header = ["term", "model", "prior only", "best constant",
              *(("best possible", "gap closed") if limits else ())]
    constant = (" The best constant prediction is the prior reweighted as the metric weighs the grades, "
                "q ∝ (1, 2, 4)·prior: of all constant predictions, the lowest expected loss where the grades "
                "occur at the prior's shares, so a model must beat it, not only the prior, to have learned.")
    best = (" The best possible score is the phantom's answer key's best prediction on the same labels "
            "(docs/phantom.md); the gap closed is (prior − model) ÷ (prior − best)." if limits else "")
    return (f"## Competition score\n\nOver the {score['studies']} studies validated by all three sequences, "
            f"on the rows `predict` writes for them.{filled}{constant}{best}\n\n"
            + markdown_table(header, rows) + "\n")


def _limit_cells(limits: dict[str, Any] | None, term: str) -> list[str]:
    """The best possible value of a term and the gap closed, or nothing without an answer key."""
    if limits is None:
        return []
    row = limits if term == "score" else limits["terms"][term]
    return [f"{row['best_possible']:.4f}", _share(row["gap_closed"])]


def localisation_markdown(part: LocalisationReport, settings: ReportSettings) -> str:
    """The "## Localisation" section: the locator runs and the localisation table with its baselines."""
    runs = markdown_table(["locator run", "sequence", "fold"],
                          [[f"`{r['path']}`", r["sequence"], r["fold"]] for r in part.runs])
    return (f"## Localisation\n\n{LOCALISATION_NOTE} {_intervals_note(settings)} Predicted on "
            f"{settings.device}; the located points are in `{LOCATOR_PREDICTIONS_CSV}`.\n\n{runs}\n\n"
            + _markdown_rows(localisation_rows(part)))
