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

A row the model cannot read (a blank cell, text where a number belongs, an infinite value)
fails the command with its place in the file, e.g. "readings.csv, line 7: blank value in
column 'age'" (lines for csv and jsonl, a csv file's header being line 1; rows from 1 for
parquet; the sheet's row number for xlsx: `oddity.cli.table_files`). With `--skip-invalid`
such a row is written with empty results and a `reason` column saying why; every other row is
scored, and the summary counts the rows skipped.

`--engine spark` scores a Parquet folder (or file) into a Parquet folder on Apache Spark,
with the version read from `--repository` instead of asked of a detector: the same answers
(`oddity.cli.spark_score`).

Reason to change: the score command's behaviour.
"""

from __future__ import annotations

import re
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from oddity.cli import output, spark_score, table_files
from oddity.cli.connection import connects
from oddity.cli.exit_codes import reports_failures
from oddity.cli.options import ThresholdPercentile
from oddity.client import DetectorClient, FeatureLayout, ModelRows
from oddity.client.detection import (
    ANOMALY_COLUMNS,
    CLASSIFIER_COLUMNS,
    PROBABILITY_PREFIX,
    TOP_FEATURES_COLUMN,
)
from oddity.common.errors import FailedPrecondition, InvalidArgument, OddityError

RESULT_PREFIX = "oddity_"
RESULT_COLUMNS = {*ANOMALY_COLUMNS, TOP_FEATURES_COLUMN, *CLASSIFIER_COLUMNS}
REASON_COLUMN = "reason"  # with --skip-invalid: why a row was not scored (empty for the others)
NAMED_ROW = re.compile(r"\brow (?P<row>\d+)(?:: |, )")  # how the detector names a request's row
WORKERS = 2  # Detect calls in flight at once: the detector batches them, this process reads and writes meanwhile
BACKLOG = 3  # batches read ahead of the one being written (bounds memory)


class Engine(StrEnum):
    """Where rows are scored."""

    grpc = "grpc"  # the detector, over gRPC
    spark = "spark"  # Apache Spark, in-process ONNX Runtime on its executors


class BatchScorer:
    """One batch at a time: the model's columns out of the frame, Detect, the results appended."""

    def __init__(
        self,
        client: DetectorClient,
        layout: FeatureLayout,
        path: Path,
        top_k: int,
        percentile: float | None,
        skip_invalid: bool,
    ) -> None:
        self.client = client
        self.layout = layout
        self.path = path
        self.top_k = top_k
        self.percentile = percentile
        self.skip_invalid = skip_invalid
        self.prefix = ""
        self.answered = False  # whether a Detect has answered: it settles top_features
        self.results: pd.DataFrame | None = None  # no rows: the result columns, as settled

    def first(self, frame: pd.DataFrame) -> None:
        """Settle the prefix of the result columns from the first batch's columns."""
        columns = [str(c) for c in frame.columns]
        own = RESULT_COLUMNS | ({REASON_COLUMN} if self.skip_invalid else set())
        if any(c in own or c.startswith(PROBABILITY_PREFIX) for c in columns):
            self.prefix = RESULT_PREFIX
        if self.layout.routing_key and not self.layout.routes(columns):
            output.note(
                f"{self.path.name} has no {self.layout.routing_key!r} column: "
                f"every row is scored by the model's 'all' group"
            )

    def score(self, frame: pd.DataFrame, first_row: int) -> pd.DataFrame:
        """`frame` (rows `first_row`... of the file, from 0) with its results."""
        try:
            checked = self.layout.check(frame)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{self.path.name}: {exc.message}") from None
        if checked.problems and not self.skip_invalid:
            position, reason = next(iter(checked.problems.items()))
            raise InvalidArgument(
                f"{self.path.name}, {table_files.place(self.path, first_row + position)}: {reason} "
                "(--skip-invalid scores the other rows and gives this one a reason)"
            )
        positions = np.flatnonzero(checked.mask)
        results = self._answered(checked.scorable, first_row, positions) if len(positions) else None
        return self._joined(frame, results, positions, checked.problems)

    def _answered(self, rows: ModelRows, first_row: int, positions: np.ndarray) -> pd.DataFrame:
        """Detect's results for `rows`; the first call learns whether top_features can be asked."""
        try:
            results = self._detect(rows, first_row, positions)
        except FailedPrecondition as refused:
            if self.answered or self.top_k == 0:
                raise
            self.top_k = 0  # perhaps a model that does not explain its scores: try without
            try:
                results = self._detect(rows, first_row, positions)
            except OddityError:
                raise refused from None
            output.note(f"no top_features column: {refused.message}")
        self.answered = True
        results.columns = [f"{self.prefix}{c}" for c in results.columns]
        return results

    def _detect(self, rows: ModelRows, first_row: int, positions: np.ndarray) -> pd.DataFrame:
        try:
            result = self.client.detect(
                self.layout.model,
                rows.rows,
                feature_names=rows.feature_names,
                routing_values=rows.routing_values,
                threshold_percentile=self.percentile,
                explain_top_k=self.top_k,
            )
        except (InvalidArgument, FailedPrecondition) as exc:
            raise type(exc)(self._located(exc, first_row + positions)) from None
        return result.to_frame()

    def _located(self, refused: OddityError, records: np.ndarray) -> str:
        """The detector's message with the file's place of the row it names (it counts the
        request's rows from 0), or of the batch's rows if it names none and is about input."""
        named = NAMED_ROW.search(refused.message)
        if named is not None and int(named["row"]) < len(records):
            where = table_files.place(self.path, int(records[int(named["row"])]))
            return f"{self.path.name}, {where}: {refused.message[: named.start()]}{refused.message[named.end() :]}"
        if isinstance(refused, InvalidArgument):
            return f"{self.path.name}, {table_files.places(self.path, records[0], records[-1])}: {refused.message}"
        return refused.message

    def _joined(
        self, frame: pd.DataFrame, results: pd.DataFrame | None, positions: np.ndarray, problems: dict[int, str]
    ) -> pd.DataFrame:
        if self.results is None:
            self.results = (results if results is not None else self._expected_results()).iloc[:0]
        if results is None:
            results = self.results
        results = results.reindex(columns=self.results.columns)
        if problems:  # the skipped rows get empty results
            results = results.set_axis(positions).reindex(range(len(frame)))
            for name, dtype in self.results.dtypes.items():
                if pd.api.types.is_bool_dtype(dtype):
                    results[name] = results[name].astype("boolean")
        if self.skip_invalid:
            reasons = [problems.get(i) for i in range(len(frame))]
            results[f"{self.prefix}{REASON_COLUMN}"] = pd.Series(reasons, dtype="str", index=results.index)
        return pd.concat([frame.reset_index(drop=True), results.reset_index(drop=True)], axis=1)

    def _expected_results(self) -> pd.DataFrame:
        """No rows, the columns Detect answers with for this model: for a first batch whose rows
        are all skipped, before any answer (a model then found not to explain its scores leaves
        top_features empty)."""
        columns: dict[str, str]
        if self.layout.classifier:
            columns = {"predicted_class": "str", "confidence": "float64", "group": "str"}
            columns |= {f"{PROBABILITY_PREFIX}{label}": "float64" for label in self.layout.class_labels}
            if self.layout.score_column:
                columns["predicted_score"] = "float64"
        else:
            columns = {name: "float64" for name in ANOMALY_COLUMNS}
            columns |= {"is_anomaly": "bool", "group": "str", "fallback": "bool"}
            if self.top_k:
                columns[TOP_FEATURES_COLUMN] = "str"
        return pd.DataFrame({f"{self.prefix}{name}": pd.Series(dtype=dtype) for name, dtype in columns.items()})


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
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="Write a row the model cannot read (a blank cell, text for a number) with empty results "
            "and a reason column, and score the others (default: stop at the first, naming its line).",
        ),
    ] = False,
    *,
    client: DetectorClient,
) -> None:
    """Score every row of a table file; write the rows with their scores, decisions and groups."""
    if engine is Engine.spark:
        if skip_invalid:
            raise typer.BadParameter("--skip-invalid goes with --engine grpc", param_hint="--skip-invalid")
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
    scorer = BatchScorer(client, layout, file, top_k, threshold_percentile, skip_invalid)
    started = time.monotonic()
    rows = anomalies = skipped = 0

    with (
        _progress(progress) as bar,
        table_files.open_writer(out) as writer,
        ThreadPoolExecutor(WORKERS, thread_name_prefix="score") as pool,
    ):
        task = bar.add_task(file.name, total=file.stat().st_size, rows=0)
        pending: deque[tuple[Future[pd.DataFrame], int]] = deque()

        def write_oldest() -> None:
            nonlocal rows, anomalies, skipped
            future, bytes_read = pending.popleft()
            scored = future.result()
            writer.write(scored)
            invalid = int(scored[f"{scorer.prefix}{REASON_COLUMN}"].notna().sum()) if skip_invalid else 0
            rows += len(scored) - invalid
            skipped += invalid
            if f"{scorer.prefix}is_anomaly" in scored.columns:
                anomalies += int(scored[f"{scorer.prefix}is_anomaly"].eq(True).sum())
            bar.update(task, completed=bytes_read, rows=rows + skipped)

        try:
            submitted = 0
            for batch in table_files.read_batches(file, batch_rows):
                if submitted == 0:
                    scorer.first(batch.frame)
                if scorer.answered:
                    pending.append((pool.submit(scorer.score, batch.frame, submitted), batch.bytes_read))
                else:  # here, in turn, until the first answer settles top_features
                    done: Future[pd.DataFrame] = Future()
                    done.set_result(scorer.score(batch.frame, submitted))
                    pending.append((done, batch.bytes_read))
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
    left_out = f", {skipped:,} invalid rows skipped (see the {scorer.prefix}{REASON_COLUMN} column)" if skipped else ""
    destination = f" -> {out}" if out else ""
    output.note(
        f"scored {rows:,} rows, {anomalies:,} anomalies{share}{left_out}, in {elapsed:.1f} s "
        f"({(rows + skipped) / max(elapsed, 1e-9):,.0f} rows/s){destination}",
        style="green",
    )
