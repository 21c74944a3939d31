"""Sources read a chunk at a time: the same rows, counts and messages as reading a file whole,
a uniform sample of at most `training.max_rows` per group, figures over every row, and Parquet
folders with hive partitions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from oddity.trainer import pipeline, table_chunks
from oddity.trainer.data import DataError, Dataset, bound_rows, load_dataset, read_csv_text, source_files
from oddity.trainer.row_sample import IN_ALL, IN_GROUP, RowSample
from oddity.trainer.spec import load_spec
from tests.support import datasets


def write(tmp_path, spec: dict, files: dict) -> tuple:
    folder = datasets.write_dataset(tmp_path, "rows", spec, files)
    return folder, load_spec(folder)


def malformed_csv(n: int = 6000) -> tuple[pd.DataFrame, str]:
    """Sensor rows where every 7th record has one field too many or too few, every 11th a blank
    cell or "n/a", and blank lines between some records."""
    frame = datasets.sensor_frame(n, d=5).round(5)
    lines = frame.to_csv(index=False).splitlines()
    for i in range(1, len(lines)):
        if i % 7 == 0:
            lines[i] = lines[i] + ",7.5" if i % 2 else lines[i].rsplit(",", 1)[0]
        elif i % 11 == 0:
            cells = lines[i].split(",")
            cells[2] = "" if i % 3 else "n/a"
            lines[i] = ",".join(cells)
        elif i % 13 == 0:
            lines[i] = lines[i] + "\n"
    return frame, "\n".join(lines) + "\n"


def test_chunked_reading_counts_and_keeps_the_rows_the_whole_file_reader_did(tmp_path, monkeypatch):
    frame, text = malformed_csv()
    reference, malformed = read_csv_text(text)  # the whole-file reader of before
    numeric = reference.apply(pd.to_numeric, errors="coerce")
    usable = numeric[np.isfinite(numeric.to_numpy(dtype=float)).all(axis=1)]
    monkeypatch.setattr(table_chunks, "CSV_BLOCK_BYTES", 4096)  # about 60 records a chunk
    spec = {"sources": [{"path": "*.csv"}], "validation": {"max_bad_row_fraction": 0.3}}
    folder, spec = write(tmp_path, spec, {"rows.csv": text.encode()})

    data = load_dataset(folder, spec)

    assert malformed == 6000 // 7 and len(reference) - len(usable) == 468
    assert data.dropped_rows == malformed + (len(reference) - len(usable))
    assert data.rows_seen == 6000
    assert data.notes == [f"dropped {data.dropped_rows} malformed rows"]
    np.testing.assert_array_equal(data.features, usable.to_numpy(dtype=np.float32))
    assert data.feature_names == list(frame.columns)


def test_chunked_reading_refuses_with_the_message_of_the_whole_file_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(table_chunks, "CSV_BLOCK_BYTES", 4096)
    frame = datasets.sensor_frame(2000)
    lines = frame.to_csv(index=False).splitlines()
    for i in range(1, len(lines), 5):
        lines[i] = lines[i] + ",7.5" if i % 2 else lines[i].rsplit(",", 1)[0]
    folder, spec = write(tmp_path, {"sources": [{"path": "*.csv"}]}, {"rows.csv": ("\n".join(lines) + "\n").encode()})
    with pytest.raises(DataError) as refused:
        load_dataset(folder, spec)
    assert str(refused.value) == (
        "400 of 2000 rows (20%) are malformed (missing, non-numeric or wrong field count), more than "
        "max_bad_row_fraction 10%"
    )


def test_cells_with_blanks_around_numbers_are_numbers_and_words_are_not(tmp_path):
    text = "a,b,note\n 1.5 ,2,x\n3, 4e1 ,y\n5,six,z\n7,8,\n"
    folder, spec = write(tmp_path, {"sources": [{"path": "*.csv"}], "min_samples": 1}, {"rows.csv": text.encode()})
    data = load_dataset(folder, spec)
    assert data.feature_names == ["a"]  # b holds a word in the first chunk: not a number column
    np.testing.assert_array_equal(data.features[:, 0], [1.5, 3, 5, 7])
    folder, spec = write(
        tmp_path, {"sources": [{"path": "*.csv"}], "features": ["a", "b"], "validation": {"max_bad_row_fraction": 0.5}},
        {"rows.csv": text.encode()},
    )
    data = load_dataset(folder, spec)
    np.testing.assert_array_equal(data.features, [[1.5, 2], [3, 40], [7, 8]])
    assert data.dropped_rows == 1


def test_each_group_trains_on_a_uniform_sample_of_at_most_max_rows(tmp_path):
    rng = np.random.default_rng(3)
    frame = datasets.sensor_frame(12_000, d=3)
    frame["age"] = rng.choice([4, 7], size=len(frame), p=[0.8, 0.2])
    spec = {
        "sources": [{"path": "*.csv"}],
        "routing": {"key": "age", "bounds": [3, 6, 9]},
        "training": {"max_rows": 1500},
    }
    folder, spec = write(tmp_path, spec, {"rows.csv": frame})
    data = load_dataset(folder, spec)
    plans = {plan.name: int(plan.mask.sum()) for plan in pipeline.plan_groups(spec, data)}
    assert plans == {"age_3_6": 1500, "age_6_9": 1500, "all": 1500}
    assert data.rows_seen == 12_000
    all_rows = pipeline.plan_groups(spec, data)[-1].mask
    # `all` is a sample of every row: its share of the smaller group is that group's share.
    assert abs(np.mean(data.routing[all_rows] == 7) - np.mean(frame["age"] == 7)) < 0.03
    figures = data.column_figures
    assert figures is not None and figures["sensor_0"]["count"] == 12_000
    assert figures["sensor_0"]["mean"] == pytest.approx(frame["sensor_0"].mean())
    assert figures["sensor_0"]["max"] == pytest.approx(frame["sensor_0"].max())
    assert data.notes == ["trained on a uniform sample of " f"{len(data.features)} of 12000 rows"]


def test_the_sample_is_uniform_over_rows_whatever_the_chunks():
    rng = np.random.default_rng(11)
    n, limit = 200_000, 4000
    group = rng.choice([0, 1], size=n, p=[0.7, 0.3])
    sample = RowSample(limit, groups=2, all_group=True, seed=5)
    start = 0
    while start < n:  # chunks of uneven sizes, as files and blocks make them
        size = int(rng.integers(1, 9000))
        rows = np.arange(start, min(n, start + size))
        sample.offer(group[rows], {"row": rows})
        start += size
    result = sample.result()
    rows, membership = result.payload["row"], result.membership
    for g in (0, 1):
        chosen = rows[(membership & IN_GROUP).astype(bool) & (group[rows] == g)]
        assert len(chosen) == limit
        # The chosen rows' ranks within their group are uniform over the group.
        ranks = np.searchsorted(np.flatnonzero(group == g), chosen)
        assert stats.kstest(ranks / (group == g).sum(), "uniform").pvalue > 0.01
    everyone = rows[(membership & IN_ALL).astype(bool)]
    assert len(everyone) == limit
    assert stats.kstest(everyone / n, "uniform").pvalue > 0.01
    assert np.all(np.diff(rows) > 0)  # kept in reading order
    # Every row is as likely to be kept: over 300 seeds, rows of each tenth of the data are
    # kept as often as the others (chi-square on the counts).
    counts = np.zeros(10)
    for seed in range(300):
        small = RowSample(50, groups=0, all_group=True, seed=seed)
        for rows_part in np.array_split(np.arange(1000), 7):
            small.offer(np.full(len(rows_part), -1), {"row": rows_part})
        counts += np.bincount(small.result().payload["row"] // 100, minlength=10)
    assert stats.chisquare(counts).pvalue > 0.01


def test_a_parquet_folder_with_hive_partitions_is_one_source(tmp_path):
    folder = datasets.write_dataset(
        tmp_path, "events", {"sources": [{"path": "events"}], "routing": {"key": "site", "bounds": [0, 2, 4]}}, {}
    )
    rng = np.random.default_rng(0)
    written = []
    for day in ("2026-12-01", "2026-12-02"):
        for site in (1, 3):
            part = folder / "events" / f"day={day}" / f"site={site}" / "hour=7"
            part.mkdir(parents=True)
            values = rng.normal(size=(300, 4))
            pq.write_table(pa.table({f"x{i}": values[:, i] for i in range(4)}), part / "part-0.parquet")
            written.append(values)
    (folder / "events" / "_SUCCESS").write_text("")
    (folder / "events" / "day=2026-12-01" / ".part-1.parquet.crc").write_text("x")
    spec = load_spec(folder)
    data = load_dataset(folder, spec)
    assert data.rows_seen == 1200
    assert data.feature_names == ["x0", "x1", "x2", "x3"]  # partition columns say where rows are stored
    assert sorted(np.unique(data.routing)) == [1.0, 3.0]
    np.testing.assert_allclose(np.sort(data.features[:, 0]), np.sort(np.vstack(written)[:, 0]), rtol=1e-6)
    assert [p.name for p in source_files(folder, spec)] == ["part-0.parquet"] * 4


def test_jsonl_is_read_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(table_chunks, "CHUNK_ROWS", 100)
    frame = datasets.sensor_frame(450, d=3)
    text = frame.to_json(orient="records", lines=True).encode()
    folder, spec = write(tmp_path, {"sources": [{"path": "*.jsonl"}]}, {"rows.jsonl": text})
    data = load_dataset(folder, spec)
    np.testing.assert_allclose(data.features, frame.to_numpy(dtype=np.float32), rtol=1e-6)
    assert data.rows_seen == 450


def test_rows_already_in_memory_train_on_the_same_bound_and_all_stay(tmp_path):
    """Embedded items: every item stays (the similarity index keeps them), each group trains
    on a uniform sample of at most max_rows."""
    rng = np.random.default_rng(2)
    features = rng.normal(size=(3000, 4)).astype(np.float32)
    ages = rng.choice([4.0, 7.0], size=3000)
    routing = {"key": "age", "bounds": [3, 6, 9]}
    _, spec = write(tmp_path, {"sources": [{"path": "*.csv"}], "routing": routing, "training": {"max_rows": 500}}, {})
    data = bound_rows(Dataset(features, ["a", "b", "c", "d"], None, ages, files=[]), spec)
    assert len(data.features) == 3000
    plans = {plan.name: int(plan.mask.sum()) for plan in pipeline.plan_groups(spec, data)}
    assert plans == {"age_3_6": 500, "age_6_9": 500, "all": 500}
    assert data.notes == [f"trained on a uniform sample of {int(np.count_nonzero(data.membership))} of 3000 rows"]
