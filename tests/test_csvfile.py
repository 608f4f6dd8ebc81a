"""The one CSV reader: typed columns, or one line naming the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest

from lumbar_fast.csvfile import FLOAT, INT, TEXT, read_csv
from lumbar_fast.errors import DataError

COLUMNS = {"study_id": INT, "x": FLOAT, "name": TEXT}


def written(tmp_path, content: str | bytes):
    path = tmp_path / "t.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_columns_are_typed_and_others_kept_as_text(tmp_path):
    table = read_csv(written(tmp_path, "study_id,x,name,extra\n7,1.5,a,1\n8,,,2\n"), COLUMNS, "test")
    assert table["study_id"].dtype == np.int64 and table["study_id"].tolist() == [7, 8]
    assert table["x"].dtype == np.float64 and np.isnan(table["x"].iloc[1])
    assert table["name"].iloc[0] == "a" and table["name"].isna().iloc[1]
    assert table["extra"].tolist() == ["1", "2"]
    assert read_csv(written(tmp_path, "study_id,x,name\n"), COLUMNS, "test").empty


@pytest.mark.parametrize("content, exact, message", [
    (None, False, "test file {path} does not exist"),
    ("", False, "test file {path} is not a readable CSV (EmptyDataError"),
    (b"study_id,x,name\n\xff\xfe,1,a\n", False, "test file {path} is not a readable CSV (UnicodeDecodeError"),
    ('study_id,x,name\n"7,1,a\n', False, "test file {path} is not a readable CSV (ParserError"),
    ("study_id,name\n7,a\n", False, "test file {path} lacks the column(s) x"),
    ("study_id,x,name,extra\n7,1,a,1\n", True, "test file {path} must have columns study_id,x,name; it has "
                                               "study_id,x,name,extra"),
    ("study_id,x,name\n7,1,a\n7.5,1,a\n", False, "test file {path}, column study_id, row 2: '7.5' is not an "
                                                 "integer"),
    ("study_id,x,name\n,1,a\n", False, "test file {path}, column study_id, row 1: empty, needs an integer"),
    ("study_id,x,name\n7,left,a\n", False, "test file {path}, column x, row 1: 'left' is not a number"),
])
def test_each_problem_is_one_line_naming_the_file(tmp_path, content, exact, message):
    path = tmp_path / "t.csv" if content is None else written(tmp_path, content)
    with pytest.raises(DataError) as error:
        read_csv(path, COLUMNS, "test", exact=exact)
    assert str(error.value).startswith(message.format(path=path)) and "\n" not in str(error.value)


def test_a_folder_is_not_a_csv(tmp_path):
    with pytest.raises(DataError, match="is a folder, not a CSV file"):
        read_csv(tmp_path, COLUMNS, "test")
