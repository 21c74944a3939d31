"""`oddity score FILE --model M`: score every row of a table file and write the rows back with
their results.

Output: the input's columns, then the result columns of `oddity.client.detection`
(`score`, `normalized_score`, `is_anomaly`, `threshold`, `confidence`, `group`, `fallback`
and `top_features`, e.g. "sensor_3:0.61;sensor_1:0.22;sensor_0:0.09": the model's features
with the largest errors and their share of the row's error). When an input column already
has one of these names, every result column is prefixed `oddity_`. A model that does not
explain its scores gets no `top_features` column (a note on stderr says so).

The model's manifest says which columns are its features (others pass through untouched)
and which column routes rows to their group (e.g. `age`). Rows go to the detector in batches
of `--batch-rows`: one batch is read while the one before is scored and the one before that
is written, so memory stays flat however large the file.

`--engine spark` scores a Parquet folder (or file) into a Parquet folder on Apache Spark,
with the version read from `--repository` instead of asked of a detector: the same answers
(`oddity.cli.spark_score`).

Reason to change: the score command's behaviour.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from oddity.cli import output, spark_score, table_files
from oddity.cli.connection import connects
from oddity.cli.exit_codes import reports_failures
from oddity.cli.options import ThresholdPercentile
from oddity.client import DetectorClient, FeatureLayout
from oddity.client.detection import (
    ANOMALY_COLUMNS,
    CLASSIFIER_COLUMNS,
    PROBABILITY_PREFIX,
    TOP_FEATURES_COLUMN,
    DetectResult,
)
from oddity.common.errors import FailedPrecondition, InvalidArgument, OddityError

RESULT_PREFIX = "oddity_"
RESULT_COLUMNS = {*ANOMALY_COLUMNS, TOP_FEATURES_COLUMN, *CLASSIFIER_COLUMNS}
WORKERS = 2  # Detect calls in flight at once: the detector batches them, this process reads and writes meanwhile
BACKLOG = 3  # batches read ahead of the one being written (bounds memory)


class Engine(StrEnum):
    """Where rows are scored."""

    grpc = "grpc"  # the detector, over gRPC
    spark = "spark"  # Apache Spark, in-process ONNX Runtime on its executors


class BatchScorer:
    """One batch at a time: the model's columns out of the frame, Detect, the results appended."""

    def __init__(
        self, client: DetectorClient, layout: FeatureLayout, source: str, top_k: int, percentile: float | None
    ) -> None:
        self.client = client
        self.layout = layout
        self.source = source
        self.top_k = top_k
        self.percentile = percentile
        self.prefix = ""

    def first(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The first batch, which settles the output's columns."""
        columns = [str(c) for c in frame.columns]
        if any(c in RESULT_COLUMNS or c.startswith(PROBABILITY_PREFIX) for c in columns):
            self.prefix = RESULT_PREFIX
        if self.layout.routing_key and not self.layout.routes(columns):
            output.note(
                f"{self.source} has no {self.layout.routing_key!r} column: "
                f"every row is scored by the model's 'all' group"
            )
        try:
            return self.score(frame, 0)
        except FailedPrecondition as refused:
            if self.top_k == 0:
                raise
            self.top_k = 0  # perhaps a model that does not explain its scores: try without
            try:
                scored = self.score(frame, 0)
            except OddityError:
                raise refused from None
            output.note(f"no top_features column: {refused.message}")
            return scored

    def score(self, frame: pd.DataFrame, first_row: int) -> pd.DataFrame:
        rows = f"{self.source}, rows {first_row + 1}-{first_row + len(frame)}"
        try:
            split = self.layout.split(frame)
            result = self.client.detect(
                self.layout.model,
                split.rows,
                feature_names=split.feature_names,
                routing_values=split.routing_values,
                threshold_percentile=self.percentile,
                explain_top_k=self.top_k,
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"{rows}: {exc.message}") from None
        return self._joined(frame, result)

    def _joined(self, frame: pd.DataFrame, result: DetectResult) -> pd.DataFrame:
        results = result.to_frame()
        results.columns = [f"{self.prefix}{c}" for c in results.columns]
        return pd.concat([frame.reset_index(drop=True), results], axis=1)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        TimeRemainingColumn(),
        console=output.err,
        disable=not (enabled and output.err.is_terminal),  # a log file gets the summary line only
    )


@reports_failures
@connects("detector")
def score(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            readable=True,
            help="Table to score: .csv, .parquet, .jsonl or .xlsx (with --engine spark: a Parquet folder or file).",
        ),
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Model to score with.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write: .csv, .jsonl or .parquet (default: csv on stdout); "
            "with --engine spark: a new Parquet folder.",
        ),
    ] = None,
    batch_rows: Annotated[int, typer.Option(min=1, max=65_536, help="Rows per Detect call.")] = 10_000,
    top_features: Annotated[
        int, typer.Option(min=0, help="Features named per row in top_features (0: no such column).")
    ] = 3,
    threshold_percentile: ThresholdPercentile = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
    engine: Annotated[
        Engine, typer.Option(help="grpc: the detector scores; spark: Apache Spark, from --repository.")
    ] = Engine.grpc,
    repository: Annotated[
        Path | None,
        typer.Option(
            "--repository",
            exists=True,
            file_okay=False,
            help="Model repository folder to read the version from (--engine spark).",
        ),
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="Version to score with (--engine spark; default: newest).")
    ] = None,
    spark_master: Annotated[str, typer.Option(help="Spark master URL (--engine spark).")] = spark_score.DEFAULT_MASTER,
    *,
    client: DetectorClient,
) -> None:
    """Score every row of a table file; write the rows with their scores, decisions and groups."""
    if engine is Engine.spark:
        if repository is None:
            raise typer.BadParameter(
                "--engine spark reads the version from a model repository", param_hint="--repository"
            )
        if out is None:
            raise typer.BadParameter("--engine spark writes a Parquet folder: name it", param_hint="--out")
        spark_score.score_parquet_folder(
            file,
            out,
            repository=repository,
            model=model,
            version=version,
            top_features=top_features,
            threshold_percentile=threshold_percentile,
            master=spark_master,
        )
        return
    if file.is_dir():
        raise typer.BadParameter("a folder is scored with --engine spark", param_hint="FILE")
    if repository is not None or version is not None:
        raise typer.BadParameter("--repository and --version go with --engine spark", param_hint="--engine")
    if table_files.read_format(file) is None:
        raise typer.BadParameter(f"cannot read {file.suffix or 'files without a suffix'} files", param_hint="FILE")
    if table_files.write_format(out) is None:
        raise typer.BadParameter("write .csv, .jsonl or .parquet", param_hint="--out")
    layout = client.layout(model)
    top_k = 0 if layout.classifier else min(top_features, layout.dimension or top_features)
    scorer = BatchScorer(client, layout, file.name, top_k, threshold_percentile)
    started = time.monotonic()
    rows = anomalies = 0

    with (
        _progress(progress) as bar,
        table_files.open_writer(out) as writer,
        ThreadPoolExecutor(WORKERS, thread_name_prefix="score") as pool,
    ):
        task = bar.add_task(file.name, total=file.stat().st_size, rows=0)
        pending: deque[tuple[Future[pd.DataFrame], int]] = deque()

        def write_oldest() -> None:
            nonlocal rows, anomalies
            future, bytes_read = pending.popleft()
            scored = future.result()
            writer.write(scored)
            rows += len(scored)
            if f"{scorer.prefix}is_anomaly" in scored.columns:
                anomalies += int(scored[f"{scorer.prefix}is_anomaly"].sum())
            bar.update(task, completed=bytes_read, rows=rows)

        try:
            submitted = 0
            for batch in table_files.read_batches(file, batch_rows):
                if submitted == 0:
                    done: Future[pd.DataFrame] = Future()
                    done.set_result(scorer.first(batch.frame))
                    pending.append((done, batch.bytes_read))
                else:
                    pending.append((pool.submit(scorer.score, batch.frame, submitted), batch.bytes_read))
                submitted += len(batch.frame)
                if len(pending) > BACKLOG:
                    write_oldest()
            while pending:
                write_oldest()
        except BaseException:
            for future, _ in pending:
                future.cancel()
            raise
    elapsed = time.monotonic() - started
    share = f" ({anomalies / rows:.1%})" if rows else ""
    destination = f" -> {out}" if out else ""
    output.note(
        f"scored {rows:,} rows, {anomalies:,} anomalies{share}, in {elapsed:.1f} s "
        f"({rows / max(elapsed, 1e-9):,.0f} rows/s){destination}",
        style="green",
    )
