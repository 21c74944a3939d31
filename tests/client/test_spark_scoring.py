"""Apache Spark scoring a Parquet folder with `mapInPandas` (`local[2]`) against a detector
process serving the same versions over gRPC: the same scores and normalized scores to the
last bit, the same decisions and groups (classes and probabilities for a classifier), row by
row; and `oddity score --engine spark` writing a Parquet folder of the input's columns and
the answers.

ONNX Runtime gives some graphs' scores (the kNN's mean distance) a last-bit difference by a
row's position in a call, so the detector gets the rows in Spark's batches: one file per
partition, each file smaller than one Arrow batch, one Detect per file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oddity.client import DetectorClient
from oddity.client.spark_scoring import score_parquet
from tests.client import batch_models
from tests.client.conftest import invoke, usage_error
from tests.support.servers import ServiceProcess

pyspark_sql = pytest.importorskip("pyspark.sql")
pytestmark = [
    pytest.mark.slow,  # a JVM, a detector process and trained models for the module
    # pyspark 4.3 warns that it does not fully support pandas 3 (what it uses here works).
    pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning"),
]

FILES = 4
ROWS_PER_FILE = 2_500  # below spark.sql.execution.arrow.maxRecordsPerBatch: one batch per file


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spark") / "models"
    path.mkdir()
    batch_models.publish_all(path)
    return path


@pytest.fixture(scope="module")
def detector(repository: Path) -> Iterator[DetectorClient]:
    process = ServiceProcess("oddity.detector.main", ["--model-repository", str(repository)]).start()
    try:
        process.wait_ready("oddity.v1.Detector")
        with DetectorClient(process.target) as client:
            yield client
    finally:
        process.terminate()


@pytest.fixture(scope="module")
def spark() -> Iterator:
    session = (
        pyspark_sql.SparkSession.builder.master("local[2]")
        .appName("oddity tests")
        .config("spark.ui.enabled", "false")
        .config("spark.pyspark.python", sys.executable)
        # Every file its own partition (no packing of small files), so batches are the files.
        .config("spark.sql.files.openCostInBytes", str(128 * 1024 * 1024))
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def parquet_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("events") / "events"
    folder.mkdir()
    frame = batch_models.table(FILES * ROWS_PER_FILE)
    for i in range(FILES):
        part = frame.iloc[i * ROWS_PER_FILE : (i + 1) * ROWS_PER_FILE]
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"part-{i}.parquet")
    return folder


def detector_answers(detector: DetectorClient, folder: Path, model: str, top_k: int) -> pd.DataFrame:
    """One Detect per file (Spark's batches), the files' rows with their answers, by id."""
    frames = []
    for path in sorted(folder.glob("*.parquet")):
        part = pq.read_table(path).to_pandas()
        frames.append(pd.concat([part, detector.detect(model, part, explain_top_k=top_k).to_frame()], axis=1))
    return pd.concat(frames).set_index("id").sort_index()


def read_scored(folder: Path) -> pd.DataFrame:
    return pq.ParquetDataset(folder).read().to_pandas().set_index("id").sort_index()


@pytest.mark.parametrize(("model", "top_k"), [("knn", 3), ("forest", 0)])
def test_spark_answers_equal_the_detectors(spark, detector, repository, parquet_folder, tmp_path, model, top_k):
    out = tmp_path / "scored"
    score_parquet(spark, parquet_folder, out, repository, model, explain_top_k=top_k)
    scored = read_scored(out)
    served = detector_answers(detector, parquet_folder, model, top_k)

    assert len(scored) == FILES * ROWS_PER_FILE
    assert list(scored.columns) == list(served.columns)
    assert np.max(np.abs(scored["normalized_score"].to_numpy() - served["normalized_score"].to_numpy())) == 0.0
    assert np.max(np.abs(scored["score"].to_numpy() - served["score"].to_numpy())) == 0.0
    assert np.array_equal(scored["is_anomaly"].to_numpy(), served["is_anomaly"].to_numpy())
    assert scored["group"].tolist() == served["group"].tolist()
    pd.testing.assert_frame_equal(scored, served, check_exact=True, check_dtype=False)
    assert 0 < scored["is_anomaly"].sum() < len(scored)


def test_score_command_with_the_spark_engine(spark, detector, repository, parquet_folder, tmp_path, cli):
    out = tmp_path / "scored"
    result = invoke(
        cli, "score", parquet_folder, "--model", "knn", "--engine", "spark", "--repository", repository, "--out", out
    )
    assert result.exit_code == 0, result.stderr
    assert f"scored {FILES * ROWS_PER_FILE:,} rows with knn v1 on Spark" in result.stderr
    scored = read_scored(out)
    served = detector_answers(detector, parquet_folder, "knn", 3)
    inputs = [c for c in batch_models.table(1).columns if c != "id"]
    answers = [
        "score",
        "normalized_score",
        "is_anomaly",
        "threshold",
        "confidence",
        "group",
        "fallback",
        "top_features",
    ]
    assert list(scored.columns) == [*inputs, *answers]
    pd.testing.assert_frame_equal(scored, served, check_exact=True, check_dtype=False)


def test_the_spark_engine_needs_a_repository_and_a_new_folder(repository, parquet_folder, tmp_path, cli):
    result = invoke(cli, "score", parquet_folder, "--model", "knn", "--engine", "spark", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "--engine spark reads the version from a model repository" in usage_error(result)
    result = invoke(
        cli,
        "score",
        parquet_folder,
        "--model",
        "knn",
        "--engine",
        "spark",
        "--repository",
        repository,
        "--out",
        tmp_path,
    )
    assert result.exit_code == 1
    assert f"{tmp_path} exists: give --out a new folder" in result.stderr


def test_spark_classifier_answers_equal_the_detectors(spark, detector, repository, parquet_folder, tmp_path):
    out = tmp_path / "scored"
    score_parquet(spark, parquet_folder, out, repository, "classes")
    scored = read_scored(out)
    served = detector_answers(detector, parquet_folder, "classes", 0)
    assert [c for c in scored.columns if c.startswith("probability_")] == ["probability_high", "probability_low"]
    pd.testing.assert_frame_equal(scored, served, check_exact=True, check_dtype=False)
