"""The one CSV reader: a file's named, typed columns, or a one-line DataError naming the file and the problem.

Every CSV lumbar-fast reads (the RSNA layout's, a locator's points, a submission, a split) goes through
`read_csv`, so that each problem reads the same everywhere: the file is missing, a folder, not a readable
CSV, lacks a column, or holds a value its column cannot take (docs/input.md lists what each caller then
decides about duplicates, unknown names and points).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lumbar_fast.errors import DataError, typed_line

#: column kinds: an integer in every row (int64); a number, empty allowed (float64, NaN); text, empty allowed
INT, FLOAT, TEXT = "int", "float", "text"
_INTEGER = r"\s*[+-]?\d+\s*"


def read_csv(path: str | Path, columns: dict[str, str], what: str, exact: bool = False) -> pd.DataFrame:
    """The CSV at `path` with `columns` (name -> INT | FLOAT | TEXT) converted; other columns are kept as
    text, or refused when `exact`. `what` names the file in errors: `{what} file {path}: problem`."""
    path = Path(path)
    label = f"{what} file {path}"
    raw = _read_text(path, label)
    absent = [name for name in columns if name not in raw.columns]
    if absent:
        raise DataError(f"{label} lacks the column(s) {', '.join(absent)}")
    if exact and list(raw.columns) != list(columns):
        raise DataError(f"{label} must have columns {','.join(columns)}; it has {','.join(raw.columns)}")
    for name, kind in columns.items():
        raw[name] = _typed(raw[name], kind, f"{label}, column {name}")
    return raw


def _read_text(path: Path, label: str) -> pd.DataFrame:
    """Every cell of the file as text (an empty cell is NaN)."""
    if path.is_dir():
        raise DataError(f"{label} is a folder, not a CSV file")
    if not path.is_file():
        raise DataError(f"{label} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{label} is not a readable CSV ({typed_line(exc)})") from None


def _typed(values: pd.Series, kind: str, where: str) -> pd.Series:
    """A column converted to its kind; DataError naming the first row (1 = the first after the header) whose
    value does not fit."""
    if kind == TEXT:
        return values
    if kind == INT:
        bad = ~values.fillna("").str.fullmatch(_INTEGER)
        converted = None if bad.any() else values.astype(np.int64)
    else:
        converted = pd.to_numeric(values, errors="coerce").astype(np.float64)
        bad = converted.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = values.iloc[row]
        needs = "an integer" if kind == INT else "a number"
        problem = f"empty, needs {needs}" if pd.isna(value) else f"{value!r} is not {needs}"
        raise DataError(f"{where}, row {row + 1}: {problem}")
    return converted
