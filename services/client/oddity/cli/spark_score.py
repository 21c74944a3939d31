"""`oddity score FOLDER --engine spark`: a Parquet folder (or file) scored on Apache Spark into
a Parquet folder, with a version read from a model repository instead of a detector.

Each row keeps its columns and gets the answer columns of `oddity.client.bundle_scoring`
(`score`, `normalized_score`, `is_anomaly`, `threshold`, `confidence`, `group`, `fallback`,
and `top_features` when the model explains its scores), exactly the detector's answers.
Spark runs `--spark-master` (default `local[*]`, every core of this machine; a cluster's URL
works when the repository path and this Python's packages are on its workers too). The output
folder is Spark's: one part per input partition, and `_SUCCESS` once complete.

Reason to change: how the command line drives Spark.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from oddity.cli import output
from oddity.client.bundle_scoring import BundleScorer
from oddity.common.errors import FailedPrecondition

DEFAULT_MASTER = "local[*]"


def score_parquet_folder(
    source: Path,
    out: Path,
    *,
    repository: Path,
    model: str,
    version: int | None,
    top_features: int,
    threshold_percentile: float | None,
    master: str = DEFAULT_MASTER,
) -> None:
    """Score `source` into the new folder `out` and print what was scored."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise FailedPrecondition(
            "--engine spark needs pyspark and a Java 17+ runtime: pip install 'oddity-client[spark]'"
        ) from None
    from oddity.client.spark_scoring import RESULT_PREFIX, score_dataframe

    if out.exists():
        raise FailedPrecondition(f"{out} exists: give --out a new folder")
    # Read and verified here first: a missing model fails before Spark starts.
    scorer = BundleScorer.load(repository, model, version)
    top_k = min(top_features, scorer.layout.dimension) if scorer.explains else 0
    if top_features and not scorer.explains and not scorer.classifier:
        output.note(f"no top_features column: model {model!r} ({scorer.kind}) does not report per-feature errors")
    started = time.monotonic()
    own_session = SparkSession.getActiveSession() is None
    builder = SparkSession.builder.master(master).appName(f"oddity score {model}").config("spark.ui.enabled", "false")
    if master.startswith("local"):
        builder = builder.config("spark.pyspark.python", sys.executable)  # this Python has the packages
    spark = builder.getOrCreate()
    try:
        df = spark.read.parquet(str(source))
        scored = score_dataframe(
            df, repository, model, scorer.version, explain_top_k=top_k, threshold_percentile=threshold_percentile
        )
        scored.write.parquet(str(out))
    finally:
        if own_session:
            spark.stop()
    elapsed = time.monotonic() - started
    written = pq.ParquetDataset(out)
    names = written.schema.names
    # The answers' own column: prefixed when the input already had one of their names.
    flag = next((c for c in (f"{RESULT_PREFIX}is_anomaly", "is_anomaly") if c in names), None)
    flags = written.read(columns=[flag] if flag and not scorer.classifier else [names[0]]).column(0)
    rows = len(flags)
    anomalies = int(flags.to_numpy(zero_copy_only=False).sum()) if flag and not scorer.classifier else 0
    share = f" ({anomalies / rows:.1%})" if rows and not scorer.classifier else ""
    output.note(
        f"scored {rows:,} rows with {model} v{scorer.version} on Spark ({master}), {anomalies:,} anomalies{share}, "
        f"in {elapsed:.1f} s ({rows / max(elapsed, 1e-9):,.0f} rows/s) -> {out}",
        style="green",
    )
