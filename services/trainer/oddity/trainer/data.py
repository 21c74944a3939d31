"""Reading a dataset's rows: files -> one table -> float32 features (+ labels, routing values).

Bad rows are dropped and counted, never silently scored: a CSV record with more or fewer
fields than the header is malformed (never shifted into other columns). A file that cannot
be read at all fails the load with a message that names the file and the reason.

Every file read is confined to its dataset folder: paths are resolved (symlinks followed)
and must stay inside it, so neither `../` nor a link can reach another team's data.

Reason to change: which files and formats are read, and what makes a row usable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from oddity.trainer.spec import READY_MARKER, SPEC_FILE, DatasetSpec

SUFFIX_FORMATS = {".csv": "csv", ".xlsx": "xlsx", ".xls": "xls", ".parquet": "parquet", ".jsonl": "jsonl"}


class DataError(Exception):
    """The data cannot be used; the message says which file and why."""


class OutsideDatasetFolder(DataError, PermissionError):
    """A path of the spec (or a link it meets) leads out of the dataset folder: refused, as a
    read the trainer is not permitted to make."""


def inside(folder: Path, path: Path, what: str) -> Path:
    """`path` with every link resolved, when it stays inside `folder`; else OutsideDatasetFolder."""
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        shown = path.relative_to(folder) if path.is_relative_to(folder) else path
        raise OutsideDatasetFolder(
            f"{what} {str(shown)!r} leads outside the dataset folder (through '..' or a symbolic link); "
            "only files inside it are read"
        )
    return resolved


@dataclass
class Dataset:
    """Rows ready for training."""

    features: np.ndarray  # [N, D] float32, finite
    feature_names: list[str]
    labels: np.ndarray | None  # [N] strings, for classifiers
    routing: np.ndarray | None  # [N] float64 routing values
    files: list[Path]
    dropped_rows: int = 0
    notes: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None  # [N] float64 values of the spec's score_column
    # Datasets with a similarity index (spec.indexed), per row: the item's default id, and its
    # row of the source's columns (tables: all but the features), for ids, metadata and tags.
    item_ids: list[str] | None = None
    item_table: pd.DataFrame | None = None


def source_files(folder: Path, spec: DatasetSpec) -> list[Path]:
    """Every file the spec names, each checked to stay inside the dataset folder."""
    inside(folder.parent, folder, "the dataset folder")
    if spec.images is not None:
        root = folder / spec.images.path
        inside(folder, root, "images.path")
        images = sorted(p for p in root.rglob("*") if p.is_file() and not in_progress(p)) if root.is_dir() else []
        metadata = folder / spec.images.metadata if spec.images.metadata else None
        files = images + ([metadata] if metadata is not None and metadata.is_file() else [])
    elif spec.texts is not None:
        path = folder / spec.texts.path
        files = [path] if path.is_file() else []
    else:
        files = []
        for source in spec.sources:
            matches = sorted(
                p for p in folder.glob(source.path) if p.is_file() and not in_progress(p) and p.name != SPEC_FILE
            )
            files.extend(m for m in matches if m not in files)
    for path in files:
        inside(folder, path, "file")
    return files


# Write-then-rename: files still being written carry one of these names and are never read.
IN_PROGRESS_SUFFIXES = (".tmp", ".partial", ".part", ".crdownload", ".filepart")


def in_progress(path: Path) -> bool:
    """A file a producer is still writing (dotfile or temporary suffix), or the ready marker."""
    name = path.name
    return name.startswith(".") or name.lower().endswith(IN_PROGRESS_SUFFIXES) or name == READY_MARKER


def file_states(folder: Path, spec: DatasetSpec) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of the spec and every data file: two equal looks mean nothing moved."""
    states = {}
    for path in [folder / SPEC_FILE, *source_files(folder, spec)]:
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        states[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return states


def ready_marker_time(folder: Path) -> int | None:
    """mtime_ns of the dataset's `_READY` file, if there is one."""
    try:
        return (folder / READY_MARKER).stat().st_mtime_ns
    except FileNotFoundError:
        return None


class FileDigests:
    """sha256 of files, remembered by (size, mtime_ns) so periodic scans rehash only files that
    changed; at most `limit` files, the least recently used forgotten first. Safe to share
    between threads (scans and jobs)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._known: OrderedDict[Path, tuple[int, int, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._known)

    def digest(self, path: Path) -> str:
        stat = path.stat()
        with self._lock:
            cached = self._known.get(path)
            if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
                self._known.move_to_end(path)
                return cached[2]
        value = file_digest(path)
        with self._lock:
            self._known[path] = (stat.st_size, stat.st_mtime_ns, value)
            self._known.move_to_end(path)
            while len(self._known) > self.limit:
                self._known.popitem(last=False)
        return value


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(folder: Path, spec: DatasetSpec, digests: FileDigests | None = None) -> str:
    """Content hash of the spec and every source file: unchanged data, unchanged fingerprint.
    `digests`: the caller's remembered file hashes (None: every file is hashed)."""
    digest = hashlib.sha256()
    spec_path = folder / SPEC_FILE
    if spec_path.exists():
        digest.update(spec_path.read_bytes())
    for path in source_files(folder, spec):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update((digests.digest(path) if digests is not None else file_digest(path)).encode())
    return digest.hexdigest()


def _read(path: Path, fmt: str) -> tuple[pd.DataFrame, int]:
    """One file as a table, and the number of malformed lines skipped."""
    try:
        if fmt == "csv":
            data = path.read_bytes()
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path.name} is not UTF-8 text (byte {exc.start}): save it as UTF-8 CSV") from exc
            if not text.strip():
                raise DataError(f"{path.name} is empty")
            return read_csv_text(text)
        if fmt in ("xlsx", "xls"):
            return pd.read_excel(path, engine="openpyxl" if fmt == "xlsx" else "xlrd"), 0
        if fmt == "parquet":
            return pd.read_parquet(path), 0
        return pd.read_json(path, lines=True), 0
    except DataError:
        raise
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path.name} is empty") from exc
    except Exception as exc:  # each reader raises its own types for corrupt files
        raise DataError(f"{path.name} cannot be read as {fmt}: {type(exc).__name__}: {exc}") from exc


def read_csv_text(text: str) -> tuple[pd.DataFrame, int]:
    """A CSV as a table, and the number of malformed records skipped: a record with more or
    fewer fields than the header is malformed. (pandas alone would turn extra leading fields
    into an index and shift every column name, or pad short records with blanks.)"""
    records = csv.reader(io.StringIO(text))
    header = next(records, [])
    kept, malformed = [header], 0
    for record in records:
        if not record:
            continue  # a blank line
        if len(record) != len(header):
            malformed += 1
            continue
        kept.append(record)
    clean = io.StringIO()
    csv.writer(clean).writerows(kept)
    return pd.read_csv(io.StringIO(clean.getvalue())), malformed


def load_dataset(folder: Path, spec: DatasetSpec, data_path: Path | None = None) -> Dataset:
    """Read the dataset's files (or `data_path`, an override) into training rows."""
    files = [data_path] if data_path is not None else source_files(folder, spec)
    if not files:
        raise DataError(f"no files match {[s.path for s in spec.sources]}")
    formats: dict[str, str | None] = {s.path: s.format for s in spec.sources}
    frames, skipped = [], 0
    for path in files:
        fmt: str | None = next((f for pattern, f in formats.items() if f and path.match(pattern)), None)
        fmt = fmt or SUFFIX_FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataError(f"{path.name}: unknown format; set `format` in the source")
        frame, bad = _read(path, fmt)
        frames.append(frame)
        skipped += bad
    table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if table.empty:
        if skipped:
            raise DataError(
                f"{skipped} of {skipped} rows (100%) are malformed (wrong field count: the header names "
                f"{len(table.columns)} columns)"
            )
        raise DataError("the data has no rows")
    return _to_dataset(table, spec, files, skipped)


def _to_dataset(table: pd.DataFrame, spec: DatasetSpec, files: list[Path], skipped: int) -> Dataset:
    table.columns = [str(c).strip() for c in table.columns]
    selection = spec.selection
    special = {c for c in (spec.label, spec.score_column, spec.routing.key if spec.routing else None) if c}
    if selection.columns:
        names = list(selection.columns)
    else:
        # The similarity section's id, tags and caption columns describe items, never measure them.
        described = {c for c in (spec.index.id_column, spec.index.tags_column, spec.index.caption_column) if c}
        numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
        names = [c for c in numeric if c not in set(selection.exclude) | special | described]
    required = [*names, *sorted(special)]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"missing columns {missing}; the file has {list(table.columns)}")
    if not names:
        raise DataError("no feature columns: list them under `features` or provide numeric columns")
    # Routing key and score column are numeric like the features: a row missing either is malformed.
    extra = [c for c in (spec.routing.key if spec.routing else None, spec.score_column) if c]
    numeric_part = table[names + extra].apply(pd.to_numeric, errors="coerce")
    values = numeric_part.to_numpy(dtype=np.float64)
    good = np.isfinite(values).all(axis=1)
    if spec.label:
        good &= table[spec.label].notna().to_numpy()
    dropped = int((~good).sum()) + skipped
    notes = [f"dropped {dropped} malformed rows"] if dropped else []
    values = values[good]
    if len(values) == 0:
        raise DataError(f"no usable rows: all {len(table)} rows have missing or non-numeric values")
    share = dropped / (len(table) + skipped)
    if share > spec.validation.max_bad_row_fraction:
        raise DataError(
            f"{dropped} of {len(table) + skipped} rows ({share:.0%}) are malformed (missing, non-numeric or "
            f"wrong field count), more than max_bad_row_fraction {spec.validation.max_bad_row_fraction:.0%}"
        )
    features = values[:, : len(names)].astype(np.float32)
    if not np.isfinite(features).all():
        raise DataError("feature values overflow float32")
    routing = values[:, len(names)] if spec.routing else None
    targets = values[:, len(names) + extra.index(spec.score_column)] if spec.score_column else None
    labels = table[spec.label].to_numpy()[good].astype(str) if spec.label else None
    dataset = Dataset(
        features=features,
        feature_names=names,
        labels=labels,
        routing=routing,
        files=files,
        dropped_rows=dropped,
        notes=notes,
        targets=targets,
    )
    if spec.indexed:  # a row's default id is its number among the rows read, 1 the first
        dataset.item_ids = [str(i + 1) for i in np.flatnonzero(good)]
        dataset.item_table = table.loc[good, [c for c in table.columns if c not in set(names)]].reset_index(drop=True)
    return dataset
