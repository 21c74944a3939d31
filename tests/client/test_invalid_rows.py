"""Rows a model cannot read, found before Detect (`FeatureLayout.check`), and where a data row
stands in its file (`table_files.place`): lines for csv (header line 1, blank lines and quoted
line breaks counted) and jsonl, rows from 1 for parquet, the sheet's row numbers for xlsx."""

from __future__ import annotations

import numpy as np
import openpyxl
import pandas as pd
import pytest

from oddity.cli import table_files
from oddity.client import FeatureLayout
from oddity.common.errors import InvalidArgument

LAYOUT = FeatureLayout(model="m", version=1, feature_names=("a", "b"), dimension=2, routing_key="age", classifier=False)


def test_each_unreadable_row_gets_its_first_column_at_fault_and_the_rest_are_split():
    frame = pd.DataFrame(
        {
            "id": ["p", "q", "r", "s", "t", "u"],
            "b": ["1", " ", "x", "2", 5, "6"],
            "a": [1.0, np.nan, 3.0, np.inf, 1e39, 6.0],
            "age": [1.0, 2.0, None, 4.0, 5.0, 6.0],
        }
    )
    checked = LAYOUT.check(frame)
    assert checked.problems == {
        1: "blank value in column 'a'",
        2: "value 'x' in column 'b' is not a number",
        3: "value inf in column 'a' is not finite",
        4: "value 1e+39 in column 'a' is beyond the range of float32",
    }
    assert checked.mask.tolist() == [True, False, False, False, False, True]
    assert checked.scorable.rows.tolist() == [[1.0, 1.0], [6.0, 6.0]]
    assert checked.scorable.routing_values == [1.0, 6.0]


def test_a_blank_routing_value_is_a_row_problem_and_a_missing_column_is_not():
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0], "age": [7.0, np.nan]})
    assert LAYOUT.check(frame).problems == {1: "blank value in column 'age'"}
    with pytest.raises(InvalidArgument, match="model 'm' needs columns that are missing: b"):
        LAYOUT.check(frame.drop(columns=["b"]))


def test_rows_that_all_fail_leave_nothing_to_score():
    checked = LAYOUT.check(pd.DataFrame({"a": [None, None], "b": [1.0, 2.0]}))
    assert checked.problems == {0: "blank value in column 'a'", 1: "blank value in column 'a'"}
    assert checked.scorable.rows.shape == (0, 2)


def test_csv_lines_count_the_header_blank_lines_and_quoted_line_breaks(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('id,x\n\n1,2\n"two\nlines",3\n\n4,\n5,6\n')
    assert [len(b.frame) for b in table_files.read_batches(path, 10)] == [4]
    assert [table_files.place(path, i) for i in range(4)] == ["line 3", "line 4", "line 7", "line 8"]
    assert table_files.places(path, 1, 3) == "lines 4-8"


def test_jsonl_lines_parquet_rows_and_sheet_rows(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"a": 1}\n\n{"a": 2}\n{"a": null}\n')
    assert [table_files.place(jsonl, i) for i in range(3)] == ["line 1", "line 3", "line 4"]
    parquet = tmp_path / "t.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(parquet)
    assert table_files.place(parquet, 1) == "row 2"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for cell, value in {"A1": "a", "A2": 1, "A4": 2, "A6": 3}.items():
        sheet[cell] = value
    xlsx = tmp_path / "t.xlsx"
    workbook.save(xlsx)
    assert [b.frame["a"].tolist() for b in table_files.read_batches(xlsx, 10)] == [[1, 2, 3]]
    assert [table_files.place(xlsx, i) for i in range(3)] == ["row 2", "row 4", "row 6"]
