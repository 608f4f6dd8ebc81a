"""One synthetic study: sample its labels, anatomy and series, render and write its DICOM files, and return
its CSV rows and manifest entries. A pure function of (seed, split, index), so any worker can build it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lumbar_fast import rsna
from lumbar_fast.phantom.anatomy import EFFACEMENT, Anatomy, NarrowingDraw, class_narrowing, sample_anatomy
from lumbar_fast.phantom.dicom_writer import Encoding, SeriesHeader, SeriesWriter, damage_file
from lumbar_fast.phantom.grading import StudyTruth, sample_truth
from lumbar_fast.phantom.options import RSNA_SIZES, PhantomOptions
from lumbar_fast.phantom.render import (
    SlicePlane,
    axial_planes,
    nearest_plane,
    render,
    sagittal_planes,
    varied_size,
)

SPLIT_CODES = {"train": 0, "test": 1}
#: series ids handed to each study: one per sequence plus one for a duplicate series
SERIES_PER_STUDY = len(rsna.SEQUENCES) + 1


@dataclass(frozen=True)
class StudyJob:
    """What a worker needs to build one study."""

    root: Path
    split: str
    index: int
    study_id: int
    series_ids: tuple[int, ...]
    options: PhantomOptions


@dataclass
class SeriesPlan:
    """One series to write: its planes in ascending position order, their instance numbers, its storage."""

    series_id: int
    sequence: str
    planes: list[SlicePlane]
    instance_numbers: list[int]
    encoding: Encoding
    instance_order: str  # "spatial", "reversed" or "shuffled"
    labelled: bool
    size_varied: bool
    off_centre: bool

    def pitfalls(self) -> list[str]:
        """Names of the pitfalls this series carries (the manifest's vocabulary)."""
        enc = self.encoding
        flags = {
            "shuffled_instances": self.instance_order != "spatial",
            "multi_stack": len({p.stack for p in self.planes}) > 1,
            "varied_size": self.size_varied,
            "monochrome1": enc.monochrome1,
            "rescale": enc.rescale is not None,
            "bits16": enc.bits_stored == 16,
            "rle": enc.transfer_syntax == "rle",
            "j2k": enc.transfer_syntax == "j2k",
            "duplicate_series": not self.labelled,
            "off_centre": self.off_centre,
        }
        return [name for name, on in flags.items() if on]


@dataclass
class StudyResult:
    """A written study: its CSV rows and manifest entries."""

    split: str
    study_id: int
    labels: dict[str, str]  # label column -> severity name or ""
    coordinates: list[tuple]  # (study_id, series_id, instance_number, condition title, level title, x, y)
    series: list[tuple[int, str]]  # (series_id, series_description)
    manifest: list[dict] = field(default_factory=list)
    damaged: list[dict] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    files: int = 0
    truth: StudyTruth | None = None  # the real-difficulty phantom's latents and p(grade), for the answer key


def build_study(job: StudyJob) -> StudyResult:
    """Sample, render and write one study under job.root; return its rows for the CSVs and manifest."""
    options, rates = job.options, job.options.pitfalls
    rng = np.random.default_rng([options.seed, SPLIT_CODES[job.split], job.index])
    severity, draw_narrowing, truth = _sample_labels(rng, options)
    missing = _sample_missing(rng, options)
    anatomy = sample_anatomy(rng, draw_narrowing, EFFACEMENT if truth else 0.0)
    plans = _plan_series(rng, anatomy, job, options)
    result = StudyResult(job.split, job.study_id, {}, [], [])
    for number, plan in enumerate(plans, start=1):
        _write_series(rng, anatomy, job, plan, number)
        result.series.append((plan.series_id, rsna.SEQUENCES[plan.sequence].description))
        result.manifest.append(_series_entry(job, plan))
        result.files += len(plan.planes)
    labelled_slices = _label(result, anatomy, plans, severity, missing)
    if rng.random() < rates.corrupt:
        result.damaged.append(_damage_one(rng, job, plans, labelled_slices))
    result.missing = [{"study_id": job.study_id, "condition": c, "level": lv, "kind": kind}
                      for (c, lv), kind in sorted(missing.items())]
    result.truth = truth
    return result


def _write_series(rng: np.random.Generator, anatomy: Anatomy, job: StudyJob, plan: SeriesPlan,
                  series_number: int) -> None:
    """Render every plane of one series (its own noise level and bias field) and write its DICOM files."""
    header = SeriesHeader(job.study_id, plan.series_id, series_number,
                          rsna.SEQUENCES[plan.sequence].description, plan.encoding)
    writer = SeriesWriter(header)
    folder = job.root / _series_folder(job, plan)
    folder.mkdir(parents=True, exist_ok=True)
    noise, bias = float(rng.uniform(0.025, 0.05)), rng.uniform(-0.15, 0.15, size=3)
    for plane, instance in zip(plan.planes, plan.instance_numbers, strict=True):
        writer.write(folder / f"{instance}.dcm", render(anatomy, plan.sequence, plane, noise, bias, rng),
                     plane, instance)


def _sample_labels(rng: np.random.Generator, options: PhantomOptions
                   ) -> tuple[dict[tuple[str, str], int], NarrowingDraw, StudyTruth | None]:
    """The study's grades and how the anatomy draws its narrowing: a rater's noisy grades of drawn latents
    (real difficulty), or classes whose narrowing comes from disjoint ranges (easy: the draws of before)."""
    if options.difficulty == "easy":
        severity = sample_severity(rng, options.frequencies)
        return severity, class_narrowing(severity, options.signal), None
    truth = sample_truth(rng, options.frequencies, options.signal)
    return truth.grades, lambda _rng: truth.narrowing, truth


def sample_severity(rng: np.random.Generator,
                    frequencies: dict[str, tuple[float, float, float]]) -> dict[tuple[str, str], int]:
    """A class id per (condition, level), drawn from its metric group's class frequencies."""
    return {(c, lv): int(rng.choice(3, p=frequencies[rsna.CONDITION_GROUP[c]]))
            for c in rsna.CONDITIONS for lv in rsna.LEVELS}


def _sample_missing(rng: np.random.Generator, options: PhantomOptions) -> dict[tuple[str, str], str]:
    """Labels left empty: a whole condition at rate missing_condition, single labels at missing_label."""
    rates = options.pitfalls
    missing: dict[tuple[str, str], str] = {}
    if rng.random() < rates.missing_condition:
        condition = rsna.CONDITIONS[int(rng.integers(len(rsna.CONDITIONS)))]
        missing.update({(condition, lv): "missing_condition" for lv in rsna.LEVELS})
    single = rng.random((len(rsna.CONDITIONS), len(rsna.LEVELS))) < rates.missing_label
    for (i, j) in zip(*np.nonzero(single), strict=True):
        missing.setdefault((rsna.CONDITIONS[i], rsna.LEVELS[j]), "missing_label")
    return missing


def _plan_series(rng: np.random.Generator, anatomy: Anatomy, job: StudyJob,
                 options: PhantomOptions) -> list[SeriesPlan]:
    """The study's series: one per sequence, plus at rate duplicate_series an unlabelled second one."""
    sequences = list(rsna.SEQUENCES)
    labelled = [True] * len(sequences)
    if rng.random() < options.pitfalls.duplicate_series:
        sequences.append(sequences[int(rng.integers(len(sequences)))])
        labelled.append(False)
    ids = job.series_ids[: len(sequences)]
    return [_plan_one(rng, anatomy, sequence, series_id, is_labelled, options)
            for sequence, series_id, is_labelled in zip(sequences, ids, labelled, strict=True)]


def _plan_one(rng: np.random.Generator, anatomy: Anatomy, sequence: str, series_id: int, labelled: bool,
              options: PhantomOptions) -> SeriesPlan:
    """Geometry, instance numbering and storage of one series."""
    rates = options.pitfalls
    if sequence == "ax_t2":
        stacks = int(rng.integers(2, 4)) if rng.random() < rates.multi_stack else 1
    else:
        stacks = 1
    base = _series_size(rng, options)
    varied = rng.random(stacks) < rates.varied_size
    sizes = [varied_size(base, rng) if v else base for v in varied]
    off_centre = rates.off_centre > 0 and bool(rng.random() < rates.off_centre)  # no draw when off
    if sequence == "ax_t2":
        planes = axial_planes(anatomy, rng, sizes, off_centre)
    else:
        planes = sagittal_planes(anatomy, rng, sizes[0], off_centre)
    numbers, order = _instance_numbers(rng, len(planes), rates.shuffled_instances)
    return SeriesPlan(series_id, sequence, planes, numbers, _sample_encoding(rng, options), order, labelled,
                      bool(any(size != base for size in sizes)), off_centre)


def _series_size(rng: np.random.Generator, options: PhantomOptions) -> int:
    """A series' base Rows = Columns: image_size, or a draw from RSNA_SIZES (no draw unless asked, so the
    phantoms of before keep their bytes)."""
    if options.size_spread == "base":
        return options.image_size
    sizes = list(RSNA_SIZES)
    return sizes[int(rng.choice(len(sizes), p=list(RSNA_SIZES.values())))]


def _instance_numbers(rng: np.random.Generator, count: int, rate: float) -> tuple[list[int], str]:
    """Instance numbers of planes in ascending position order: 1..n, or out of order from an offset."""
    if rng.random() >= rate:
        return list(range(1, count + 1)), "spatial"
    start = int(rng.integers(2, 60))
    if rng.random() < 0.5:
        return [start + count - 1 - i for i in range(count)], "reversed"
    return [start + int(i) for i in rng.permutation(count)], "shuffled"


def _sample_encoding(rng: np.random.Generator, options: PhantomOptions) -> Encoding:
    """Bit depth, photometric interpretation, rescale and transfer syntax of one series."""
    rates = options.pitfalls
    bits16 = rng.random() < rates.bits16
    full_scale = float(rng.uniform(8000, 30000) if bits16 else rng.uniform(1200, 3000))
    rescale = None
    if rng.random() < rates.rescale:
        rescale = (round(float(rng.uniform(1.5, 3.0)), 4), round(float(rng.uniform(-1000, -50)), 2))
    syntax_draw = rng.random()
    if syntax_draw < rates.rle:
        syntax = "rle"
    elif syntax_draw < rates.rle + rates.j2k:
        syntax = "j2k"
    else:
        syntax = "explicit_little"
    return Encoding(full_scale=round(full_scale, 1), bits_stored=16 if bits16 else 12,
                    monochrome1=bool(rng.random() < rates.monochrome1), rescale=rescale,
                    transfer_syntax=syntax)


def _label(result: StudyResult, anatomy: Anatomy, plans: list[SeriesPlan],
           severity: dict[tuple[str, str], int], missing: dict[tuple[str, str], str]) -> set[tuple[int, int]]:
    """Fill the study's labels and coordinate rows; return the (series_id, plane index) of labelled slices."""
    primary = {plan.sequence: plan for plan in plans if plan.labelled}
    labelled_slices: set[tuple[int, int]] = set()
    for condition in rsna.CONDITIONS:
        plan = primary[rsna.SEQUENCE_OF_CONDITION[condition]]
        for level in rsna.LEVELS:
            column = f"{condition}_{level}"
            if (condition, level) in missing:
                result.labels[column] = ""
                continue
            result.labels[column] = rsna.SEVERITIES[severity[(condition, level)]]
            index, x, y = nearest_plane(plan.planes, anatomy.labelled_point(condition, level))
            labelled_slices.add((plan.series_id, index))
            result.coordinates.append((result.study_id, plan.series_id, plan.instance_numbers[index],
                                       rsna.CONDITION_TITLES[condition], rsna.LEVEL_TITLES[level], x, y))
    return labelled_slices


def _damage_one(rng: np.random.Generator, job: StudyJob, plans: list[SeriesPlan],
                labelled_slices: set[tuple[int, int]]) -> dict:
    """Damage one file that is neither a labelled slice nor a labelled slice's neighbour."""
    candidates = [(plan, i) for plan in plans for i in range(len(plan.planes))
                  if not any((plan.series_id, i + d) in labelled_slices for d in (-1, 0, 1))]
    plan, index = candidates[int(rng.integers(len(candidates)))]
    kind = "truncated" if rng.random() < 0.5 else "garbage"
    instance = plan.instance_numbers[index]
    relative = _series_folder(job, plan) / f"{instance}.dcm"
    damage_file(job.root / relative, kind, rng)
    return {"path": relative.as_posix(), "kind": kind, "study_id": job.study_id,
            "series_id": plan.series_id, "instance_number": instance}


def _series_folder(job: StudyJob, plan: SeriesPlan) -> Path:
    """A series' folder relative to the data set root: {split}_images/{study_id}/{series_id}."""
    return Path(f"{job.split}_images") / str(job.study_id) / str(plan.series_id)


def _series_entry(job: StudyJob, plan: SeriesPlan) -> dict:
    """The manifest's record of one series."""
    encoding = asdict(plan.encoding)
    return {
        "split": job.split, "study_id": job.study_id, "series_id": plan.series_id,
        "series_description": rsna.SEQUENCES[plan.sequence].description, "labelled": plan.labelled,
        "instances": len(plan.planes), "stacks": len({p.stack for p in plan.planes}),
        "instance_order": plan.instance_order, "first_instance": min(plan.instance_numbers),
        "shapes": sorted({(p.rows, p.cols) for p in plan.planes}),
        "pixel_spacing": sorted({p.spacing for p in plan.planes}),
        "bits_stored": encoding["bits_stored"], "monochrome1": encoding["monochrome1"],
        "rescale": encoding["rescale"], "transfer_syntax": encoding["transfer_syntax"],
        "pitfalls": plan.pitfalls(),
    }
