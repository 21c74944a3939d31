"""Reading a table source a chunk at a time, so memory stays bounded whatever the file's size:
CSV through pyarrow's streaming reader, Parquet by row groups (one file, or a folder of files
with hive-style partitions such as `day=2026-12-01/part-0.parquet`), JSONL by lines, Excel
whole (workbooks are small).

A CSV record with more or fewer fields than the header is malformed: skipped and counted,
never shifted into other columns. Each chunk answers the same questions whatever the format
(`Chunk`): its column names, a column's values as numbers (NaN where missing or not a number),
whether a column holds numbers, which cells are present, and some rows as a pandas table.

Reason to change: which formats are read and how their cells become numbers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq

# CSV bytes parsed at a time; the reader keeps a few blocks in flight.
CSV_BLOCK_BYTES = 2 << 20
# Rows per chunk of Parquet and JSONL sources.
CHUNK_ROWS = 65_536

# What pandas reads as a missing cell (its default `na_values`), so a CSV's blanks and "n/a"
# are missing as they were when pandas read the whole file.
MISSING_TEXTS = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
]  # fmt: skip

# A number as pyarrow's cast reads it (after trimming blanks, which pandas allowed around numbers).
_NUMBER = r"(?i)^[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|inf(inity)?|nan)$"


class Unreadable(Exception):
    """The file cannot be read at all (the message says why, without the file's name)."""


class Chunk(Protocol):
    """Some consecutive rows of a source."""

    @property
    def columns(self) -> list[str]: ...

    @property
    def rows(self) -> int: ...

    @property
    def partitions(self) -> tuple[str, ...]:
        """Columns that come from a folder's hive partitions (`day=...`): they say where rows
        are stored, so they are never taken as features unless listed."""
        ...

    def numbers(self, name: str) -> np.ndarray:
        """The column as float64; NaN where the cell is missing or not a number."""
        ...

    def holds_numbers(self, name: str) -> bool:
        """Whether the column is numeric (every present cell a number, for text sources)."""
        ...

    def present(self, name: str) -> np.ndarray:
        """Per row: the cell is not missing."""
        ...

    def frame(self, names: list[str], rows: np.ndarray) -> pd.DataFrame:
        """Those rows of those columns, as pandas reads them."""
        ...


@dataclass
class ReadCounts:
    """What reading one source met: the header's columns and the malformed records skipped."""

    header: list[str] = field(default_factory=list)
    malformed: int = 0


# -- Arrow chunks (CSV, Parquet) ------------------------------------------------------------


@dataclass(frozen=True)
class ArrowChunk:
    batch: pa.RecordBatch
    # CSV cells arrive as text: numbers are parsed here, and typed the way pandas would type them.
    text: bool = False
    partitions: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return list(self.batch.schema.names)

    @property
    def rows(self) -> int:
        return self.batch.num_rows

    def _column(self, name: str) -> pa.Array:
        column = self.batch.column(name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        return column

    def numbers(self, name: str) -> np.ndarray:
        column = self._column(name)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return _text_numbers(column)
        try:
            cast = pc.cast(column, pa.float64(), safe=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return np.full(len(column), np.nan)  # dates, lists...: not numbers
        return np.asarray(cast.to_numpy(zero_copy_only=False), dtype=np.float64)

    def holds_numbers(self, name: str) -> bool:
        column = self._column(name)
        kind = column.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return _unparsed(column) == 0
        return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or (
            pa.types.is_decimal(kind) or pa.types.is_null(kind)
        )

    def present(self, name: str) -> np.ndarray:
        return np.asarray(pc.is_valid(self.batch.column(name)).to_numpy(zero_copy_only=False), dtype=bool)

    def frame(self, names: list[str], rows: np.ndarray) -> pd.DataFrame:
        return self.batch.select(names).take(pa.array(rows, type=pa.int64())).to_pandas()


def _text_numbers(column: pa.Array) -> np.ndarray:
    try:
        cast = pc.cast(column, pa.float64())
    except pa.ArrowInvalid:  # some cell is not a number as it stands: blanks around it, or text
        trimmed = pc.utf8_trim_whitespace(column)
        number = pc.match_substring_regex(trimmed, _NUMBER)
        cast = pc.cast(pc.if_else(number, trimmed, pa.scalar(None, pa.string())), pa.float64())
    return np.asarray(cast.to_numpy(zero_copy_only=False), dtype=np.float64)


def _unparsed(column: pa.Array) -> int:
    """Present cells that are not numbers."""
    present = pc.is_valid(column)
    trimmed = pc.utf8_trim_whitespace(column)
    number = pc.fill_null(pc.match_substring_regex(trimmed, _NUMBER), False)
    return int(pc.sum(pc.and_(present, pc.invert(number))).as_py() or 0)


def csv_chunks(path: Path, counts: ReadCounts) -> Iterator[Chunk]:
    """A CSV's records in blocks, every cell as text; wrong field counts skipped and counted."""

    def malformed(row: Any) -> str:
        counts.malformed += 1
        return "skip"

    names = _csv_header(path)
    counts.header = names
    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(block_size=CSV_BLOCK_BYTES, column_names=names, skip_rows=1),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=malformed),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            null_values=MISSING_TEXTS,
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )
    for batch in reader:
        if batch.num_rows:
            yield ArrowChunk(batch, text=True)


def _csv_header(path: Path) -> list[str]:
    """The header's column names, stripped; repeated names numbered as pandas numbers them
    (`a`, `a.1`), so every column can be told apart."""
    with path.open("rb") as f:
        head = f.read(1 << 20).decode("utf-8-sig", errors="replace")
    names: list[str] = []
    for name in (n.strip() for n in next(csv.reader(io.StringIO(head)), [])):
        candidate, repeat = name, 0
        while candidate in names:
            repeat += 1
            candidate = f"{name}.{repeat}"
        names.append(candidate)
    return names


def parquet_chunks(path: Path, counts: ReadCounts) -> Iterator[Chunk]:
    """A Parquet file by row groups, or a folder of them (hive partitions become columns)."""
    if path.is_dir():
        dataset = pa_dataset.dataset(path, format="parquet", partitioning="hive")
        counts.header = list(dataset.schema.names)
        partitioning = dataset.partitioning
        partitions = tuple(partitioning.schema.names) if partitioning is not None else ()
        batches = dataset.to_batches(batch_size=CHUNK_ROWS, batch_readahead=1, fragment_readahead=1)
    else:
        parquet = pq.ParquetFile(path)
        counts.header = list(parquet.schema_arrow.names)
        batches, partitions = parquet.iter_batches(batch_size=CHUNK_ROWS), ()
    for batch in batches:
        if batch.num_rows:
            names = [str(n).strip() for n in batch.schema.names]
            yield ArrowChunk(batch.rename_columns(names), partitions=partitions)


# -- pandas chunks (JSONL, Excel) -----------------------------------------------------------


@dataclass(frozen=True)
class PandasChunk:
    table: pd.DataFrame

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in self.table.columns]

    @property
    def rows(self) -> int:
        return len(self.table)

    @property
    def partitions(self) -> tuple[str, ...]:
        return ()

    def numbers(self, name: str) -> np.ndarray:
        return pd.to_numeric(self.table[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    def holds_numbers(self, name: str) -> bool:
        return bool(pd.api.types.is_numeric_dtype(self.table[name]))

    def present(self, name: str) -> np.ndarray:
        return self.table[name].notna().to_numpy()

    def frame(self, names: list[str], rows: np.ndarray) -> pd.DataFrame:
        return self.table.iloc[rows][names].reset_index(drop=True)


def _named(table: pd.DataFrame) -> pd.DataFrame:
    table.columns = [str(c).strip() for c in table.columns]
    return table


def jsonl_chunks(path: Path, counts: ReadCounts) -> Iterator[Chunk]:
    with pd.read_json(path, lines=True, chunksize=CHUNK_ROWS) as reader:
        for table in reader:
            table = _named(table)
            counts.header = counts.header or list(table.columns)
            if len(table):
                yield PandasChunk(table)


def excel_chunks(path: Path, counts: ReadCounts, engine: str) -> Iterator[Chunk]:
    table = _named(pd.read_excel(path, engine=engine))
    counts.header = list(table.columns)
    if len(table):
        yield PandasChunk(table)


def release_buffers() -> None:
    """Give the memory Arrow's allocator keeps for reuse back to the system: after a read it
    held ~360 MB of a 20M-row folder's buffers, which training would have added to."""
    pa.default_memory_pool().release_unused()


def chunks(path: Path, fmt: str, counts: ReadCounts) -> Iterator[Chunk]:
    """The source's rows a chunk at a time; raises Unreadable for a file that is not of its format."""
    if fmt == "csv":
        _check_text(path)
    readers = {
        "csv": lambda: csv_chunks(path, counts),
        "parquet": lambda: parquet_chunks(path, counts),
        "jsonl": lambda: jsonl_chunks(path, counts),
        "xlsx": lambda: excel_chunks(path, counts, "openpyxl"),
        "xls": lambda: excel_chunks(path, counts, "xlrd"),
    }
    try:
        yield from readers[fmt]()
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "UTF8" in text or "UTF-8" in text:
            raise Unreadable("is not UTF-8 text: save it as UTF-8 CSV") from exc
        raise Unreadable(f"cannot be read as {fmt}: {type(exc).__name__}: {exc}") from exc


def _check_text(path: Path) -> None:
    """An empty CSV, and one that does not start as UTF-8 text, fail with the reason."""
    with path.open("rb") as f:
        head = f.read(1 << 16)
        more = bool(f.read(1))
    if not more and not head.decode("utf-8-sig", errors="replace").strip():
        raise Unreadable("is empty")
    try:
        head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not a character cut at the end of the look
            raise Unreadable(f"is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV") from exc
