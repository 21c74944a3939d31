"""Batch scoring of a Parquet folder: Apache Spark `local[2]` (`mapInPandas` running
`oddity.client.bundle_scoring` on its executors) against in-process ONNX Runtime on the same
machine, same model, same rows; answers checked against a detector.

    python -m bench.batch_scoring [--rows 2000000] [--features 20] [--files 8] [--kind knn]

Alone, it writes `--rows` correlated rows in `--files` Parquet files and publishes a `--kind`
model (trained in this process on other rows), then measures. `measure()` takes an existing
folder, repository and model (bench/scale.py runs it on a 20M-row, 8-partition folder).

Measured, each end to end (read the folder, score, write a Parquet folder of the rows and
their answers): rows/s of Spark local[2], and of the baseline in the same run: this process
reading the folder with pyarrow batch by batch (10,000 rows, Spark's Arrow batch), scoring
with a BundleScorer on 2 threads and writing with pyarrow. The figure is the ratio
Spark / in-process. Spark is timed after a first job on one file (its JVM's JIT and Python
workers warm, as on a running cluster: the first job ran at a third of the speed of the
next). Beside it, Spark's own cost: the same job with every batch handed back unscored.

Checked: `check_rows` rows drawn uniformly from the folder, scored by Spark as one batch and
by the detector at `detector_address` as one Detect (without a detector: by the in-process
scorer): max abs diff of normalized scores, rows whose is_anomaly or group differ. ONNX
Runtime gives some graphs' scores (a kNN's mean distance) a last-bit difference by a row's
position in a call, which is why both get the rows as one batch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq

from bench.machine import describe
from oddity.client import DetectorClient
from oddity.client.bundle_scoring import BundleScorer
from oddity.client.spark_scoring import score_dataframe, score_parquet

BATCH_ROWS = 10_000  # Spark's spark.sql.execution.arrow.maxRecordsPerBatch default
SPARK_MASTER = "local[2]"
IN_PROCESS_THREADS = 2


def spark_session(master: str = SPARK_MASTER) -> Any:
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(master)
        .appName("oddity bench.batch_scoring")
        .config("spark.ui.enabled", "false")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )


def _dataset(folder: Path) -> pa_dataset.Dataset:
    return pa_dataset.dataset(folder, format="parquet", partitioning="hive")


def in_process_rate(
    folder: Path, repository: Path, model: str, out: Path, limit: int | None = None
) -> tuple[float, int]:
    """Rows/s and rows of this process reading, scoring and writing the folder (its first
    `limit` rows, when given: a rate needs no more)."""
    scorer = BundleScorer.load(repository, model, threads=IN_PROCESS_THREADS)
    started, rows = time.perf_counter(), 0
    writer: pq.ParquetWriter | None = None
    try:
        for batch in _dataset(folder).to_batches(batch_size=BATCH_ROWS):
            frame = batch.to_pandas()
            scored = pa.Table.from_pandas(pd.concat([frame, scorer.score(frame)], axis=1), preserve_index=False)
            if writer is None:
                out.mkdir(parents=True)
                writer = pq.ParquetWriter(out / "part-0.parquet", scored.schema)
            writer.write_table(scored)
            rows += batch.num_rows
            if limit is not None and rows >= limit:
                break
    finally:
        if writer is not None:
            writer.close()
    return rows / (time.perf_counter() - started), rows


def spark_rate(spark: Any, folder: Path, repository: Path, model: str, out: Path) -> tuple[float, int]:
    """Rows/s and rows of Spark reading, scoring and writing the folder."""
    started = time.perf_counter()
    score_parquet(spark, folder, out, repository, model)
    seconds = time.perf_counter() - started
    rows = pq.ParquetDataset(out).read(columns=[]).num_rows
    return rows / seconds, rows


def _unchanged(batches: Any) -> Any:
    yield from batches


def spark_passthrough_rate(spark: Any, folder: Path, out: Path) -> float:
    """Rows/s of the same Spark job with every batch handed back unscored: the engine's own
    cost (reading, Arrow to and from the Python workers, writing)."""
    started = time.perf_counter()
    df = spark.read.parquet(str(folder))
    df.mapInPandas(_unchanged, df.schema).write.parquet(str(out))
    seconds = time.perf_counter() - started
    return pq.ParquetDataset(out).read(columns=[]).num_rows / seconds


def check(
    spark: Any, folder: Path, repository: Path, model: str, check_rows: int, detector_address: str | None
) -> dict[str, Any]:
    """Spark's answers for a uniform sample of rows against the detector's (or the in-process
    scorer's), both given the sample as one batch."""
    dataset = _dataset(folder)
    total = dataset.count_rows()
    picked = np.sort(np.random.default_rng(0).choice(total, size=min(check_rows, total), replace=False))
    sample = dataset.take(pa.array(picked)).to_pandas()
    df = spark.createDataFrame(sample).coalesce(1)  # one partition, one Arrow batch (below)
    previous = spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(max(len(sample), 1)))
    try:
        by_spark = score_dataframe(df, repository, model).toPandas()
    finally:
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", previous)
    if detector_address is not None:
        with DetectorClient(detector_address) as client:
            reference = client.detect(model, sample).to_frame()
        against = f"detector at {detector_address}"
    else:
        reference = BundleScorer.load(repository, model).score(sample)
        against = "in-process scorer"
    answers = by_spark.iloc[:, sample.shape[1] :].reset_index(drop=True)
    reference = reference.reset_index(drop=True)
    figures: dict[str, Any] = {"checked_rows": len(sample), "checked_against": against}
    if "normalized_score" in reference:
        difference = np.abs(answers["normalized_score"].to_numpy() - reference["normalized_score"].to_numpy())
        figures["max_abs_diff_normalized_score"] = float(difference.max(initial=0.0))
        figures["is_anomaly_mismatches"] = int((answers["is_anomaly"] != reference["is_anomaly"]).sum())
    else:
        figures["predicted_class_mismatches"] = int((answers["predicted_class"] != reference["predicted_class"]).sum())
    figures["group_mismatches"] = int((answers["group"].to_numpy() != reference["group"].to_numpy()).sum())
    return figures


def measure(
    parquet_folder: Path,
    repository: Path,
    model: str,
    check_rows: int = 10_000,
    detector_address: str | None = None,
    baseline_rows: int | None = None,
) -> dict[str, Any]:
    """Spark local[2] vs in-process ONNX Runtime on the folder, and the answers checked (see
    the module docstring). JSON-ready figures; the caller prints them."""
    parquet_folder, repository = Path(parquet_folder), Path(repository)
    scratch = Path(tempfile.mkdtemp(prefix="oddity-batch-scoring-"))
    spark = spark_session()
    try:
        local, _ = in_process_rate(parquet_folder, repository, model, scratch / "in-process", baseline_rows)
        rows = _dataset(parquet_folder).count_rows()
        shutil.rmtree(scratch / "in-process", ignore_errors=True)  # room on disk for Spark's copy
        # A running cluster's JVM is warm: a first job on one file pays the JIT and worker start.
        first_file = min(parquet_folder.rglob("*.parquet"))
        score_parquet(spark, first_file, scratch / "warm-up", repository, model)
        distributed, spark_rows = spark_rate(spark, parquet_folder, repository, model, scratch / "spark")
        if spark_rows != rows:
            raise RuntimeError(f"Spark wrote {spark_rows:,} rows, the folder has {rows:,}")
        shutil.rmtree(scratch / "spark", ignore_errors=True)
        passthrough = spark_passthrough_rate(spark, parquet_folder, scratch / "passthrough")
        figures = check(spark, parquet_folder, repository, model, check_rows, detector_address)
    finally:
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "machine": describe(),
        "rows": rows,
        "spark_local2_rows_per_second": round(distributed),
        "in_process_rows_per_second": round(local),
        "spark_over_in_process": round(distributed / local, 3),
        "spark_unscored_rows_per_second": round(passthrough),
        **figures,
    }


# -- run alone: its own data and model ------------------------------------------------------


def write_folder(folder: Path, rows: int, features: int, files: int) -> None:
    """`rows` correlated rows (some unusual) with an id, in `files` Parquet files."""
    from tests.support import models

    folder.mkdir(parents=True)
    names = [f"f{i}" for i in range(features)]
    per_file = -(-rows // files)
    for i, start in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - start)
        values = models.normal_rows(n, features, seed=100 + i)
        values[::97] += 4.0
        frame = pd.DataFrame(values, columns=names)
        frame.insert(0, "id", np.arange(start, start + n, dtype=np.int64))
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), folder / f"part-{i}.parquet")


def publish_model(repository: Path, name: str, kind: str, features: int) -> None:
    """A `kind` detector fitted in this process on 5,000 other rows; threshold and quantile
    table from 1,250 held-out rows, as the contract asks."""
    from oddity.trainer.learners import make_learner
    from tests.support import models

    rows = models.normal_rows(6_250, features, seed=1)
    graph = make_learner(kind, {}).fit(rows[:5_000]).to_onnx()
    heldout = models.score_with_onnx(graph, rows[5_000:]).astype(np.float64)
    fitted = models.FittedGroup(
        onnx=graph,
        threshold=float(np.percentile(heldout, 95.0)),
        quantiles=np.quantile(heldout, models.QUANTILE_LEVELS),
        heldout_scores=heldout,
        train_samples=5_000,
        validation_samples=len(heldout),
    )
    models.publish(
        repository,
        name,
        {"all": (models.group_proto("all", fitted), graph)},
        dimension=features,
        feature_names=[f"f{i}" for i in range(features)],
        kind=kind,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--kind", default="knn", help="model kind (trainer learner) to score with")
    args = parser.parse_args()
    print(describe(), flush=True)
    from tests.support.servers import ServiceProcess

    with tempfile.TemporaryDirectory(prefix="oddity-bench-") as tmp:
        root = Path(tmp)
        folder, repository = root / "events", root / "models"
        repository.mkdir()
        write_folder(folder, args.rows, args.features, args.files)
        publish_model(repository, "bench", args.kind, args.features)
        detector = ServiceProcess("oddity.detector.main", ["--model-repository", str(repository)]).start()
        try:
            detector.wait_ready("oddity.v1.Detector")
            figures = measure(folder, repository, "bench", detector_address=detector.target)
        finally:
            detector.terminate()
    print(
        f"{figures['rows']:,} rows x {args.features} features in {args.files} Parquet files, "
        f"model {args.kind}; read, score, write a Parquet folder:"
    )
    print(f"  Spark {SPARK_MASTER} (mapInPandas):  {figures['spark_local2_rows_per_second']:>10,} rows/s")
    print(
        f"  baseline: in-process ONNX Runtime ({IN_PROCESS_THREADS} threads): "
        f"{figures['in_process_rows_per_second']:>10,} rows/s"
    )
    print(f"  Spark / in-process: {figures['spark_over_in_process']:.2f}")
    print(f"  Spark's own cost: the same job without scoring {figures['spark_unscored_rows_per_second']:>10,} rows/s")
    print(
        f"  check on {figures['checked_rows']:,} rows against the {figures['checked_against']}: max abs diff of "
        f"normalized scores {figures['max_abs_diff_normalized_score']}, is_anomaly mismatches "
        f"{figures['is_anomaly_mismatches']}, group mismatches {figures['group_mismatches']}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
