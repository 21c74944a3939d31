"""Tables read and written in batches, so a file larger than memory streams through.

Read by suffix: `.csv` (pandas, in chunks), `.parquet` (pyarrow, batch by batch), `.jsonl` /
`.ndjson` (pandas, one JSON object per line, in chunks) and `.xlsx` (openpyxl's read-only
mode, row by row; the first sheet, its first row the header). Each batch comes with how far
into the file it reaches, in bytes: the position read for csv and jsonl, the share of rows
done for parquet and xlsx.

A row is named as the file's format counts: csv and jsonl by line (a csv file's header is line
1; blank lines count, as do the lines of a quoted cell that spans several), parquet by row from
1, xlsx by the sheet's row number (as the spreadsheet shows it).

Written by suffix: `.csv`, `.jsonl` (numbers exactly as they are, NaN as null) and
`.parquet` (one row group per batch; the first batch's column types are the file's). A file
is written under a hidden temporary name and renamed when complete, so a failed run never
leaves a file that looks finished. Without a path: csv on stdout.

Reason to change: the table formats the command line reads and writes.
"""

# pyarrow and openpyxl ship no type information.
from __future__ import annotations

import csv
import json
import math
import sys
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

READ_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".xlsx": "xlsx"}
PLACE_WORDS = {
    "csv": ("line", "lines"),
    "jsonl": ("line", "lines"),
    "parquet": ("row", "rows"),
    "xlsx": ("row", "rows"),
}
WRITE_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class TableError(Exception):
    """A table that cannot be read or written as its suffix says, with the reason."""


@dataclass(frozen=True)
class Batch:
    frame: pd.DataFrame
    bytes_read: int  # how far into the file this batch reaches


def read_format(path: Path) -> str | None:
    return READ_FORMATS.get(path.suffix.lower())


def write_format(path: Path | None) -> str | None:
    return "csv" if path is None else WRITE_FORMATS.get(path.suffix.lower())


def read_batches(path: Path, batch_rows: int) -> Iterator[Batch]:
    """The table at `path` in batches of at most `batch_rows` rows."""
    readers = {"csv": _csv, "parquet": _parquet, "jsonl": _jsonl, "xlsx": _xlsx}
    file_format = read_format(path)
    if file_format is None:
        raise TableError(f"{path.name}: cannot read {path.suffix or 'files without a suffix'} files")
    return _readable(path, file_format, readers[file_format](path, batch_rows))


def _readable(path: Path, file_format: str, batches: Iterator[Batch]) -> Iterator[Batch]:
    """The batches; a file its reader cannot parse is a TableError naming it."""
    from openpyxl.utils.exceptions import InvalidFileException

    try:
        yield from batches
    except (ValueError, pa.ArrowException, zipfile.BadZipFile, InvalidFileException) as exc:
        raise TableError(f"{path.name} cannot be read as {file_format}: {exc}") from exc


def _csv(path: Path, batch_rows: int) -> Iterator[Batch]:
    with path.open("rb") as handle:
        for chunk in pd.read_csv(handle, chunksize=batch_rows):
            yield Batch(chunk, handle.tell())


def _jsonl(path: Path, batch_rows: int) -> Iterator[Batch]:
    with path.open("rb") as handle:
        # Values stay as written (no dates guessed from column names); floats to the last digit.
        reader = pd.read_json(handle, lines=True, chunksize=batch_rows, dtype=False, precise_float=True)
        for chunk in reader:
            yield Batch(chunk, handle.tell())


def _parquet(path: Path, batch_rows: int) -> Iterator[Batch]:
    size = path.stat().st_size
    with pq.ParquetFile(path) as parquet:
        total, done = max(parquet.metadata.num_rows, 1), 0
        for record_batch in parquet.iter_batches(batch_size=batch_rows):
            done += record_batch.num_rows
            yield Batch(record_batch.to_pandas(), size * done // total)


def _xlsx(path: Path, batch_rows: int) -> Iterator[Batch]:
    size = path.stat().st_size
    with _sheet(path) as (header, total, rows):
        if header is None:
            return
        columns = [str(name) if name is not None else f"column_{i + 1}" for i, name in enumerate(header)]
        buffer: list[tuple[Any, ...]] = []
        done = 0
        for _, row in rows:
            buffer.append(row)
            if len(buffer) == batch_rows:
                done += len(buffer)
                yield Batch(pd.DataFrame(buffer, columns=columns), min(size, size * done // total))
                buffer = []
        if buffer:
            yield Batch(pd.DataFrame(buffer, columns=columns), size)


@contextmanager
def _sheet(path: Path) -> Iterator[tuple[tuple[Any, ...] | None, int, Iterator[tuple[int, tuple[Any, ...]]]]]:
    """The first sheet's header row, its row count (from the sheet's dimension, which may be
    unknown: at least 1) and its other rows with their row numbers, the empty ones left out."""
    import openpyxl  # only xlsx input pays for the import

    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sheet = workbook.worksheets[0]
        rows = sheet.iter_rows(values_only=True)  # from the sheet's row 1
        header = next(rows, None)
        numbered = (
            (number, row)
            for number, row in enumerate(rows, start=2)
            if not all(value is None for value in row)  # openpyxl reports trailing formatted-but-empty rows
        )
        yield header, max((sheet.max_row or 0) - 1, 1), numbered
    finally:
        workbook.close()


def place(path: Path, record: int) -> str:
    """Where data row `record` (from 0, in the order read_batches yields them) stands in the
    file, e.g. "line 7"; reads the file again up to it (a message's cost, not a row's)."""
    (number,) = _numbers(path, [record])
    return f"{PLACE_WORDS[_format(path)][0]} {number}"


def places(path: Path, first: int, last: int) -> str:
    """Where data rows `first`..`last` (from 0) stand in the file, e.g. "lines 12-21"."""
    start, end = _numbers(path, [first, last])
    return f"{PLACE_WORDS[_format(path)][1]} {start}-{end}"


def _format(path: Path) -> str:
    file_format = read_format(path)
    if file_format is None:
        raise TableError(f"{path.name}: cannot read {path.suffix or 'files without a suffix'} files")
    return file_format


def _numbers(path: Path, records: Sequence[int]) -> list[int]:
    """The line or row numbers (module docstring) of data rows `records` (from 0)."""
    file_format = _format(path)
    if file_format == "parquet":
        return [record + 1 for record in records]
    wanted, last = dict.fromkeys(records, 0), max(records)
    for record, number in enumerate(_data_row_numbers(path, file_format)):
        if record in wanted:
            wanted[record] = number
        if record >= last:
            break
    return [wanted[record] for record in records]


def _data_row_numbers(path: Path, file_format: str) -> Iterator[int]:
    """The number of each data row in turn, skipping what the reader skips (blank lines; a
    csv file's header; a sheet's empty rows)."""
    if file_format == "xlsx":
        with _sheet(path) as (_, _, rows):
            yield from (number for number, _ in rows)
        return
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        if file_format == "jsonl":
            yield from (number for number, line in enumerate(handle, start=1) if line.strip())
            return
        reader = csv.reader(handle)
        header_seen = False
        for record in reader:
            if not any(cell.strip() for cell in record) and len(record) <= 1:
                continue  # a blank line: pandas skips it
            if header_seen:
                yield reader.line_num - _line_breaks(record)
            header_seen = True


def _line_breaks(record: list[str]) -> int:
    """Line breaks inside the record's quoted cells: reader.line_num is its last line."""
    return sum(cell.count("\n") for cell in record)


class TableWriter(Protocol):
    def write(self, frame: pd.DataFrame) -> None: ...


class _CsvWriter:
    """Arrow's CSV writer: ten times pandas' speed, floats in their shortest exact form. Each
    batch is written on its own, so batches need not agree on column types."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.header = True

    def write(self, frame: pd.DataFrame) -> None:
        try:
            sink = pa.BufferOutputStream()
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=self.header))
            self.handle.write(sink.getvalue().to_pybytes().decode("utf-8"))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            frame.to_csv(self.handle, header=self.header, index=False)  # e.g. a column of mixed types
        self.handle.flush()  # each batch leaves as it is scored
        self.header = False


class _JsonLinesWriter:
    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle

    def write(self, frame: pd.DataFrame) -> None:
        columns = [str(c) for c in frame.columns]
        lines = (
            json.dumps(dict(zip(columns, map(_json_value, row), strict=True)), ensure_ascii=False, default=str)
            for row in frame.itertuples(index=False, name=None)
        )
        self.handle.write("".join(line + "\n" for line in lines))


def _json_value(value: Any) -> Any:
    """Python's own float repr keeps every digit (pandas' to_json rounds to 15)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


class _ParquetWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pq.ParquetWriter | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        elif table.schema != self.writer.schema:
            try:
                table = table.cast(self.writer.schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise TableError(
                    f"a later batch's column types do not fit the first batch's ({exc}); "
                    "write csv or jsonl, or give the column one type throughout"
                ) from exc
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@contextmanager
def open_writer(path: Path | None) -> Iterator[TableWriter]:
    """A writer for `path` by its suffix (None: csv on stdout); the file appears only when the
    block ends without an error."""
    file_format = write_format(path)
    if file_format is None:
        raise TableError(f"cannot write {path.suffix if path else ''} files: use .csv, .jsonl or .parquet")
    if path is None:
        yield _CsvWriter(sys.stdout)
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        if file_format == "parquet":
            parquet = _ParquetWriter(partial)
            try:
                yield parquet
            finally:
                parquet.close()
        else:
            with partial.open("w", newline="", encoding="utf-8") as handle:
                yield _CsvWriter(handle) if file_format == "csv" else _JsonLinesWriter(handle)
        if partial.exists():  # a parquet file of no batches is never started
            partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
