"""Names and spellings of the RSNA 2024 data set: conditions, levels, severities, series types, sequences.

Every other module takes its vocabulary from here, so the CSV spellings live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from lumbar_fast.csvfile import FLOAT, INT, TEXT
from lumbar_fast.errors import LumbarFastError

#: label-column condition names (train.csv, sample_submission row_id), in the competition's order
CONDITIONS: tuple[str, ...] = (
    "spinal_canal_stenosis",
    "left_neural_foraminal_narrowing",
    "right_neural_foraminal_narrowing",
    "left_subarticular_stenosis",
    "right_subarticular_stenosis",
)
#: label-column level names
LEVELS: tuple[str, ...] = ("l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1")

#: train_label_coordinates.csv spellings
CONDITION_TITLES: dict[str, str] = {
    "spinal_canal_stenosis": "Spinal Canal Stenosis",
    "left_neural_foraminal_narrowing": "Left Neural Foraminal Narrowing",
    "right_neural_foraminal_narrowing": "Right Neural Foraminal Narrowing",
    "left_subarticular_stenosis": "Left Subarticular Stenosis",
    "right_subarticular_stenosis": "Right Subarticular Stenosis",
}
LEVEL_TITLES: dict[str, str] = {
    "l1_l2": "L1/L2", "l2_l3": "L2/L3", "l3_l4": "L3/L4", "l4_l5": "L4/L5", "l5_s1": "L5/S1",
}
CONDITION_FROM_TITLE = {title: name for name, title in CONDITION_TITLES.items()}
LEVEL_FROM_TITLE = {title: name for name, title in LEVEL_TITLES.items()}

#: train.csv severity values; the index is the class id used everywhere (0, 1, 2; -1 = missing)
SEVERITIES: tuple[str, ...] = ("Normal/Mild", "Moderate", "Severe")
SEVERITY_FROM_NAME = {name: i for i, name in enumerate(SEVERITIES)}
MISSING = -1
#: train_label_coordinates.csv columns (also what `locate` writes and `ingest --coordinates` reads)
COORDINATE_COLUMNS = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
#: sample_submission.csv probability columns, in class order
SUBMISSION_COLUMNS: tuple[str, ...] = ("normal_mild", "moderate", "severe")
#: the probability columns of prediction tables (val_predictions.csv, crop predictions, the answer key)
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{name}" for name in SUBMISSION_COLUMNS)
#: the competition's sample weights per class
CLASS_WEIGHTS: tuple[float, ...] = (1.0, 2.0, 4.0)

#: metric groups: each condition belongs to one (left and right pooled)
CONDITION_GROUP: dict[str, str] = {
    "spinal_canal_stenosis": "spinal",
    "left_neural_foraminal_narrowing": "foraminal",
    "right_neural_foraminal_narrowing": "foraminal",
    "left_subarticular_stenosis": "subarticular",
    "right_subarticular_stenosis": "subarticular",
}


@dataclass(frozen=True)
class Sequence:
    """One MRI sequence: its short name, its SeriesDescription and the conditions graded on it."""

    name: str
    description: str
    conditions: tuple[str, ...]


SEQUENCES: dict[str, Sequence] = {
    "sag_t1": Sequence("sag_t1", "Sagittal T1",
                       ("left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing")),
    "sag_t2": Sequence("sag_t2", "Sagittal T2/STIR", ("spinal_canal_stenosis",)),
    "ax_t2": Sequence("ax_t2", "Axial T2", ("left_subarticular_stenosis", "right_subarticular_stenosis")),
}
SEQUENCE_FROM_DESCRIPTION = {seq.description.casefold(): seq.name for seq in SEQUENCES.values()}


def sequence_of_description(description: object) -> str | None:
    """The sequence a series_description names, regardless of case and of spaces around or doubled inside it
    (a hand-edited CSV's ' sagittal t1'); None for any other text."""
    return SEQUENCE_FROM_DESCRIPTION.get(" ".join(str(description).split()).casefold())
SEQUENCE_OF_CONDITION = {cond: seq.name for seq in SEQUENCES.values() for cond in seq.conditions}

#: train.csv label columns, `{condition}_{level}`, in the competition's order
LABEL_COLUMNS: tuple[str, ...] = tuple(f"{c}_{lv}" for c in CONDITIONS for lv in LEVELS)


#: the column kinds (csvfile.read_csv) of a train.csv-format labels file (its caller checks the severity
#: names) and of a sample_submission.csv-format file
LABELS_CSV: dict[str, str] = {"study_id": INT, **dict.fromkeys(LABEL_COLUMNS, TEXT)}
SUBMISSION_CSV: dict[str, str] = {"row_id": TEXT, **dict.fromkeys(SUBMISSION_COLUMNS, FLOAT)}


def get_sequence(name: str) -> Sequence:
    """The Sequence called `name`, or a one-line error listing the valid names."""
    try:
        return SEQUENCES[name]
    except KeyError:
        raise LumbarFastError(
            f"unknown sequence {name!r}; choose one of {', '.join(SEQUENCES)}"
        ) from None


def severity_name(severity: int) -> str:
    """The class name of a severity id ("missing" for -1)."""
    return "missing" if severity == MISSING else SEVERITIES[severity]


def row_id(study_id: int, condition: str, level: str) -> str:
    """The submission row id of one (study, condition, level)."""
    return f"{study_id}_{condition}_{level}"
