"""Scoring a Spark DataFrame with a published version: `mapInPandas` runs a `BundleScorer`
on every executor, so each row gets exactly the detector's answer without a detector.

    from oddity.client.spark_scoring import score_dataframe
    scored = score_dataframe(spark.read.parquet("s3://bucket/events/"), "/models", "sensors")
    scored.write.parquet("s3://bucket/scored/")

The version's files are read and verified once, where the job starts (the driver), and travel
with the job as bytes: executors need the `oddity-client[spark]` packages, not the model
repository. Each Python worker builds its ONNX Runtime sessions once per version and reuses
them for every batch of every task it runs. The output is the input's columns, then the
answer columns (`bundle_scoring.result_fields`), prefixed `oddity_` when an input column
already has one of their names.

Reason to change: how Oddity's scoring is laid onto Spark.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from oddity.client.bundle_scoring import BundleScorer, ModelVersion, result_fields
from oddity.common.errors import InvalidArgument
from oddity.v1 import manifest_pb2

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

RESULT_PREFIX = "oddity_"

# Per Python worker: the scorers built lately, by their manifest's sha256 (it names every
# graph's sha256, so two repositories' "v3" never mix). Spark reuses its Python workers across
# tasks and jobs, so a version's sessions are built once per worker, not once per task.
_scorers: dict[str, BundleScorer] = {}
_scorers_lock = threading.Lock()
KEPT_SCORERS = 4


def _scorer(version: ModelVersion) -> BundleScorer:
    key = hashlib.sha256(version.manifest_json.encode()).hexdigest()
    with _scorers_lock:
        scorer = _scorers.get(key)
        if scorer is None:
            if len(_scorers) >= KEPT_SCORERS:
                _scorers.pop(next(iter(_scorers)))  # the oldest
            scorer = _scorers[key] = BundleScorer(version)
        return scorer


@dataclass(frozen=True)
class ScoringJob:
    """What every executor needs: the version's bytes and the scoring options."""

    version: ModelVersion
    explain_top_k: int = 0
    threshold_percentile: float | None = None
    prefix: str = ""

    def __call__(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """mapInPandas' function: each batch's rows, then their answers."""
        scorer = _scorer(self.version)
        for batch in batches:
            scored = scorer.score(
                batch, explain_top_k=self.explain_top_k, threshold_percentile=self.threshold_percentile
            )
            scored.columns = [f"{self.prefix}{c}" for c in scored.columns]
            yield pd.concat([batch.reset_index(drop=True), scored.reset_index(drop=True)], axis=1)


def scoring_job(
    repository: Path | str,
    model: str,
    version: int | None = None,
    *,
    columns: list[str] | None = None,
    explain_top_k: int = 0,
    threshold_percentile: float | None = None,
) -> tuple[ScoringJob, manifest_pb2.ModelManifest]:
    """The mapInPandas function for `model` (`version`, or the newest complete one) and the
    version's manifest; `columns`: the input's column names (an answer column's name among
    them prefixes every answer column with `oddity_`)."""
    read = ModelVersion.read(repository, model, version)
    manifest = read.verified().manifest
    if explain_top_k and manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION:
        raise InvalidArgument(f"model {model!r} is a classifier: explain_top_k does not apply")
    answers = {name for name, _ in result_fields(manifest, explain=True)}
    prefix = RESULT_PREFIX if columns and answers & set(columns) else ""
    job = ScoringJob(read, explain_top_k, threshold_percentile, prefix)
    return job, manifest


def output_schema(df: DataFrame, manifest: manifest_pb2.ModelManifest, job: ScoringJob) -> str:
    """The input's schema as DDL, then the answer columns."""
    own = [f"`{field.name}` {field.dataType.simpleString()}" for field in df.schema.fields]
    answers = [f"`{job.prefix}{name}` {kind}" for name, kind in result_fields(manifest, explain=job.explain_top_k > 0)]
    return ", ".join(own + answers)


def score_dataframe(
    df: DataFrame,
    repository: Path | str,
    model: str,
    version: int | None = None,
    *,
    explain_top_k: int = 0,
    threshold_percentile: float | None = None,
) -> DataFrame:
    """`df` with the answers of `model` appended to every row (lazily: Spark runs it when
    the result is written or collected)."""
    job, manifest = scoring_job(
        repository,
        model,
        version,
        columns=df.columns,
        explain_top_k=explain_top_k,
        threshold_percentile=threshold_percentile,
    )
    return df.mapInPandas(job, output_schema(df, manifest, job))


def score_parquet(
    spark: SparkSession,
    source: Path | str,
    destination: Path | str,
    repository: Path | str,
    model: str,
    version: int | None = None,
    *,
    explain_top_k: int = 0,
    threshold_percentile: float | None = None,
) -> None:
    """Score a Parquet folder (or file) into a new Parquet folder, one part per input partition."""
    df = spark.read.parquet(str(source))
    scored = score_dataframe(
        df, repository, model, version, explain_top_k=explain_top_k, threshold_percentile=threshold_percentile
    )
    scored.write.mode("errorifexists").parquet(str(destination))
