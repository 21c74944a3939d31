"""Columns left out of the default features for holding no numbers are named: only those that
would have been features. A column with a role (the label, the similarity section's id
column, a partition) or excluded by the spec is not left out; listed features leave nothing out."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oddity.trainer.data import DataError, load_dataset
from oddity.trainer.spec import load_spec
from tests.support import datasets


def readings(n: int = 60):
    rows = datasets.sensor_frame(n, d=3)
    rows["city"] = [("Oslo", "Lima")[i % 2] for i in range(n)]
    rows["recorded"] = "2026-01-05"
    rows["grade"] = [("good", "poor")[i % 2] for i in range(n)]
    rows["serial"] = [f"S-{i}" for i in range(n)]
    rows["note"] = "checked"
    return rows


def test_only_columns_that_would_have_been_features_are_left_out(data_volume):
    spec = {
        "sources": [{"path": "*.csv"}],
        "label": "grade",
        "features": {"exclude": ["note"]},
        "model": {"kind": "random_forest"},
        "similarity": {"id_column": "serial"},
    }
    folder = datasets.write_dataset(data_volume, "readings", spec, {"rows.csv": readings()})
    data = load_dataset(folder, load_spec(folder))
    assert (data.feature_names, data.left_out_columns) == (["sensor_0", "sensor_1", "sensor_2"], ["city", "recorded"])


def test_partition_columns_are_not_left_out(data_volume):
    folder = datasets.write_dataset(data_volume, "parts", {"sources": [{"path": "readings"}]}, {})
    table = pa.Table.from_pandas(datasets.sensor_frame(40, d=3), preserve_index=False)
    (folder / "readings" / "site=north").mkdir(parents=True)
    pq.write_table(table, folder / "readings" / "site=north" / "part-0.parquet")
    data = load_dataset(folder, load_spec(folder))
    assert data.left_out_columns == []


def test_listed_features_leave_nothing_out(data_volume):
    spec = {"sources": [{"path": "*.csv"}], "features": ["sensor_0", "sensor_2"]}
    folder = datasets.write_dataset(data_volume, "listed", spec, {"rows.csv": readings()})
    assert load_dataset(folder, load_spec(folder)).left_out_columns == []


def test_a_table_of_text_alone_says_which_columns_hold_no_numbers(data_volume):
    rows = readings()[["city", "note"]]
    folder = datasets.write_dataset(data_volume, "words", {"sources": [{"path": "*.csv"}]}, {"rows.csv": rows})
    with pytest.raises(DataError, match=r"^no feature columns \(city, note hold no numbers\): list them"):
        load_dataset(folder, load_spec(folder))
