"""Reading a dataset's rows: files -> one table -> float32 features (+ labels, routing values).

Bad rows are dropped and counted, never silently scored: a CSV record with more or fewer
fields than the header is malformed (never shifted into other columns). A file that cannot
be read at all fails the load with a message that names the file and the reason.

Every file read is confined to its dataset folder: paths are resolved (symlinks followed)
and must stay inside it, so neither `../` nor a link can reach another team's data; nothing
under a `.oddity` folder (where the trainer keeps its own state) is ever data. A Train
request's `data_path` is held to the same rules, and may not be a hard link to a file
elsewhere in the data volume (`data_path_file`).

Reason to change: which files and formats are read, and what makes a row usable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oddity.common.errors import shown
from oddity.trainer.row_sample import IN_ALL, IN_GROUP, ColumnFigures, RowSample
from oddity.trainer.spec import READY_MARKER, SPEC_FILE, DatasetSpec
from oddity.trainer.table_chunks import Chunk, ReadCounts, Unreadable, chunks, release_buffers

SUFFIX_FORMATS = {".csv": "csv", ".xlsx": "xlsx", ".xls": "xls", ".parquet": "parquet", ".jsonl": "jsonl"}
# Columns left out for holding no numbers that a message, the history or GetStatus names at most
# (a wide table of text would outgrow the line; the count says how many there were).
LEFT_OUT_NAMES_SHOWN = 20


class DataError(Exception):
    """The data cannot be used; the message says which file and why."""


class OutsideDatasetFolder(DataError, PermissionError):
    """A path of the spec (or a link it meets) leads out of the dataset folder: refused, as a
    read the trainer is not permitted to make."""


class TrainerStateNotData(DataError, PermissionError):
    """A path under a `.oddity` folder: the trainer keeps its state (history, jobs, checkpoints,
    embeddings) in such a folder, and nothing there is ever read as data."""


class LinkedElsewhere(DataError, PermissionError):
    """A hard link to a file that also has a name outside the dataset folder: another name for
    another team's data (or the trainer's state), refused like a symbolic link out."""


# The folder of the trainer's own state, `<data volume>/.oddity`: never data, wherever it appears.
STATE_FOLDER = ".oddity"


def inside(folder: Path, path: Path, what: str) -> Path:
    """`path` with every link resolved, when it stays inside `folder` and out of any `.oddity`
    folder in it; else OutsideDatasetFolder or TrainerStateNotData."""
    resolved, root = path.resolve(), folder.resolve()
    named = path.relative_to(folder) if path.is_relative_to(folder) else path
    if not resolved.is_relative_to(root):
        raise OutsideDatasetFolder(
            f"{what} {str(named)!r} leads outside the dataset folder (through '..' or a symbolic link); "
            "only files inside it are read"
        )
    if STATE_FOLDER in resolved.relative_to(root).parts:
        raise TrainerStateNotData(
            f"{what} {str(named)!r} is under a {STATE_FOLDER} folder, which holds the trainer's state, never data"
        )
    return resolved


def data_path_file(data_path: str, folder: Path, volume: Path, link_roots: Iterable[Path]) -> Path:
    """The file a Train request's `data_path` names, resolved. It is relative to the dataset
    folder; a path relative to the data volume (`datasets/<name>/...`, what the API first took)
    is still accepted when it lands in the same folder. Either way it must resolve (`..` and
    symbolic links followed) to a file inside the dataset folder, out of any `.oddity` folder,
    and must not be a hard link to a file elsewhere under `link_roots` (another dataset's
    folder, the trainer's state). Else a DataError saying which rule and which folder."""
    quoted = shown(data_path)  # a request may carry a path of megabytes
    own = folder.resolve()
    where = _in_volume(own, volume)
    candidates = [(folder / data_path).resolve(), (volume / data_path).resolve()]
    path = next((path for path in candidates if path.is_file()), candidates[0])
    if not path.is_relative_to(own):
        raise OutsideDatasetFolder(
            f"data_path {quoted!r} leads outside the dataset folder (through '..', a symbolic link or "
            f"another folder); it must name a file under {str(where)!r}"
        )
    if not path.is_file():
        raise DataError(f"data_path {quoted!r} is not a file under the dataset folder {str(where)!r}")
    if STATE_FOLDER in path.relative_to(own).parts:
        raise TrainerStateNotData(
            f"data_path {quoted!r} is under a {STATE_FOLDER} folder, which holds the trainer's state, never data"
        )
    elsewhere = other_name(path, link_roots, own)
    if elsewhere is not None:
        other = str(_in_volume(elsewhere, volume))
        raise LinkedElsewhere(
            f"data_path {quoted!r} is a hard link to {other!r}, outside the dataset folder {str(where)!r}; "
            "a dataset reads only its own files (copy the file instead of linking it)"
        )
    return path


def other_name(path: Path, roots: Iterable[Path], own: Path) -> Path | None:
    """A name of `path` under one of `roots` but outside the folder `own`, when the file has
    several (hard links: link count > 1; None for an ordinary file). The walk compares the inode
    numbers the directory listings carry (no stat per file) and follows no symbolic link."""
    stat = path.stat()
    if stat.st_nlink < 2:
        return None
    resolved = sorted({root.resolve() for root in roots}, key=lambda root: len(root.parts))
    pending = [str(root) for i, root in enumerate(resolved) if not any(root.is_relative_to(r) for r in resolved[:i])]
    while pending:
        try:
            with os.scandir(pending.pop()) as listing:
                for item in listing:
                    if item.is_dir(follow_symlinks=False):
                        if not Path(item.path).is_relative_to(own):
                            pending.append(item.path)
                    elif item.inode() == stat.st_ino and item.stat(follow_symlinks=False).st_dev == stat.st_dev:
                        return Path(item.path)
        except OSError:  # a folder that cannot be listed (gone, no permission): nothing to compare
            continue
    return None


def _in_volume(path: Path, volume: Path) -> Path:
    """`path` as a caller names it: relative to the data volume when it is in it."""
    return path.relative_to(volume.resolve()) if path.is_relative_to(volume.resolve()) else path


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
    # Records read (usable, dropped and malformed): more than the rows when the rows are a sample.
    rows_seen: int = 0
    # Per row, which group samples it is in (row_sample.IN_GROUP | IN_ALL); None: every row in each.
    membership: np.ndarray | None = None
    # Per feature column, over every row read: count, missing, mean, min, max.
    column_figures: dict[str, dict[str, Any]] | None = None
    # Features not listed in the spec: the columns that would have been features had they held
    # numbers (text, dates, ...), left out (the history and GetStatus name them).
    left_out_columns: list[str] = field(default_factory=list)

    def in_group_sample(self) -> np.ndarray:
        """Per row: trained on by its routing group."""
        if self.membership is None:
            return np.ones(len(self.features), dtype=bool)
        return (self.membership & IN_GROUP).astype(bool)

    def in_all_sample(self) -> np.ndarray:
        """Per row: trained on by the `all` group."""
        if self.membership is None:
            return np.ones(len(self.features), dtype=bool)
        return (self.membership & IN_ALL).astype(bool)


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
        files = [file for path, _ in source_units(folder, spec) for file in parquet_folder_files(path)]
    for path in files:
        inside(folder, path, "file")
    return files


def source_units(folder: Path, spec: DatasetSpec) -> list[tuple[Path, str]]:
    """A table dataset's sources as they are read, each with its format: files, and folders of
    Parquet files (hive partitions such as `day=2026-12-01/part-0.parquet`), each inside the folder."""
    inside(folder.parent, folder, "the dataset folder")
    units: list[Path] = []
    taken: set[Path] = set()
    parquet_folders: list[Path] = []  # only a folder can hold a later match (a file is compared by `taken`)
    for source in spec.sources:
        for match in sorted(
            p
            for p in folder.glob(source.path)
            if not in_progress(p)
            and not in_hidden_folder(folder, p)
            and p.name != SPEC_FILE
            and (p.is_file() or _parquet_folder(p, source.format))
        ):
            if match in taken or any(match.is_relative_to(f) for f in parquet_folders):
                continue
            units.append(match)
            taken.add(match)
            if match.is_dir():
                parquet_folders.append(match)
    for path in units:
        inside(folder, path, "folder" if path.is_dir() else "file")
    return [(path, _format(path, spec)) for path in units]


def _parquet_folder(path: Path, fmt: str | None) -> bool:
    """A folder is a source when it holds Parquet files (and the source does not say another format)."""
    if not path.is_dir() or fmt not in (None, "parquet"):
        return False
    return any(p.suffix == ".parquet" for p in parquet_folder_files(path))


def parquet_folder_files(path: Path) -> list[Path]:
    """A source's files: itself, or a Parquet folder's data files (as pyarrow reads them: names
    starting with `.` or `_`, such as Spark's `_SUCCESS`, are not data)."""
    if not path.is_dir():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not in_progress(p)
        and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts)
    )


# Write-then-rename: files still being written carry one of these names and are never read.
IN_PROGRESS_SUFFIXES = (".tmp", ".partial", ".part", ".crdownload", ".filepart")


def in_progress(path: Path) -> bool:
    """A file a producer is still writing (dotfile or temporary suffix), or the ready marker."""
    name = path.name
    return name.startswith(".") or name.lower().endswith(IN_PROGRESS_SUFFIXES) or name == READY_MARKER


def in_hidden_folder(folder: Path, path: Path) -> bool:
    """A path under a hidden folder of the dataset (`.oddity`, `.git`, `.ipynb_checkpoints`, ...):
    like dotfiles, never data, whatever a source's glob (`**/*.csv`) would match."""
    return any(part.startswith(".") for part in path.relative_to(folder).parts[:-1])


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

    def digest(self, path: Path, stat: os.stat_result | None = None) -> str:
        """The file's sha256; `stat`: the file's, when the caller has just taken it."""
        stat = stat if stat is not None else path.stat()
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


# A file as the file system knows it, whatever its name: (device, inode).
FileIdentity = tuple[int, int]


def fingerprint(
    folder: Path,
    spec: DatasetSpec,
    digests: FileDigests | None = None,
    hard_links: dict[FileIdentity, Path] | None = None,
) -> str:
    """Content hash of the spec and every source file: unchanged data, unchanged fingerprint.
    `digests`: the caller's remembered file hashes (None: every file is hashed). `hard_links`:
    filled with the source files that have more than one name (link count > 1), by identity,
    from the stat the hashing takes anyway."""
    digest = hashlib.sha256()
    spec_path = folder / SPEC_FILE
    if spec_path.exists():
        digest.update(spec_path.read_bytes())
    for path in source_files(folder, spec):
        stat = path.stat()
        if hard_links is not None and stat.st_nlink > 1:
            hard_links[(stat.st_dev, stat.st_ino)] = path
        digest.update(str(path.relative_to(folder)).encode())
        digest.update((digests.digest(path, stat) if digests is not None else file_digest(path)).encode())
    return digest.hexdigest()


def read_csv_text(text: str) -> tuple[pd.DataFrame, int]:
    """A small CSV read whole (an image dataset's metadata, a text dataset's texts) as a table,
    and the number of malformed records skipped: a record with more or fewer fields than the
    header is malformed. (pandas alone would turn extra leading fields into an index and shift
    every column name, or pad short records with blanks.) Sources go through table_chunks."""
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


def load_dataset(
    folder: Path, spec: DatasetSpec, data_path: Path | None = None, *, check: Callable[[], None] = lambda: None
) -> Dataset:
    """Read the dataset's sources (or `data_path`, an override) a chunk at a time into training
    rows: at most `training.max_rows` per group, a uniform sample of the usable rows, with every
    row counted and each column's figures over all rows. `check` is called between chunks (it
    raises to stop a job)."""
    if data_path is not None:  # checked when the job was asked for; again, as it may have moved since
        inside(folder, data_path, "data_path")
    units = [(data_path, _format(data_path, spec))] if data_path is not None else source_units(folder, spec)
    if not units:
        raise DataError(f"no files match {[s.path for s in spec.sources]}")
    reading = _Reading(spec)
    for path, fmt in units:
        counts = ReadCounts()
        stream = chunks(path, fmt, counts)
        while True:
            check()
            try:
                chunk = next(stream, None)
            except Unreadable as exc:
                raise DataError(f"{path.name} {exc}") from exc
            except pd.errors.EmptyDataError as exc:
                raise DataError(f"{path.name} is empty") from exc
            except Exception as exc:  # each reader raises its own types for corrupt files
                raise DataError(f"{path.name} cannot be read as {fmt}: {type(exc).__name__}: {exc}") from exc
            if chunk is None:
                break
            reading.add(chunk, csv_text=fmt == "csv")
        reading.malformed += counts.malformed
        reading.header = reading.header or counts.header
    release_buffers()
    return reading.dataset([path for path, _ in units])


def bound_rows(data: Dataset, spec: DatasetSpec) -> Dataset:
    """Rows already in memory (embedded items) with the same per-group bound as read rows: each
    group trains on a uniform sample of at most `training.max_rows`; every row stays (the
    similarity index keeps them all)."""
    routing = spec.routing
    groups = max(len(routing.bounds) - 1, 0) if routing else 0
    if len(data.features) <= spec.training.max_rows:
        return data
    sample = RowSample(spec.training.max_rows, groups, routing is None or routing.all_group, _seed(spec))
    group_of = routing_groups(data.routing, routing.bounds) if routing and data.routing is not None else None
    n = len(data.features)
    sample.offer(group_of if group_of is not None else np.full(n, -1), {"row": np.arange(n)})
    sampled = sample.result()
    data.membership = np.zeros(n, dtype=np.uint8)
    data.membership[sampled.payload["row"]] = sampled.membership
    used = int(np.count_nonzero(data.membership))
    data.notes.append(f"trained on a uniform sample of {used} of {n} rows")
    return data


def _seed(spec: DatasetSpec) -> int:
    """The sample's seed: the model's, so a run on the same data trains on the same rows."""
    return int(spec.model.params.get("seed", 0))


def _format(path: Path, spec: DatasetSpec) -> str:
    fmt: str | None = next((s.format for s in spec.sources if s.format and path.match(s.path)), None)
    fmt = fmt or ("parquet" if path.is_dir() else SUFFIX_FORMATS.get(path.suffix.lower()))
    if fmt is None:
        raise DataError(f"{path.name}: unknown format; set `format` in the source")
    return fmt


def routing_groups(values: np.ndarray, bounds: list[float]) -> np.ndarray:
    """Each value's routing group: i for [bounds[i], bounds[i+1]) (the last closed above), -1 outside."""
    group = np.full(len(values), -1, dtype=np.int64)
    for i, (low, high) in enumerate(itertools.pairwise(bounds)):
        last = i == len(bounds) - 2
        group[(values >= low) & ((values <= high) if last else (values < high)) & (group < 0)] = i
    return group


@dataclass(frozen=True)
class _Roles:
    """What each column is for, decided on the first chunk: features, the numeric routing key
    and score column, the label, (indexed datasets) the columns kept for the items, and the
    columns left out of the default features for holding no numbers."""

    features: list[str]
    numeric_extra: list[str]
    label: str | None
    described: list[str] | None
    not_numeric: list[str]

    @classmethod
    def of(cls, chunk: Chunk, spec: DatasetSpec) -> _Roles:
        columns = chunk.columns
        selection = spec.selection
        special = {c for c in (spec.label, spec.score_column, spec.routing.key if spec.routing else None) if c}
        not_numeric: list[str] = []
        if selection.columns:
            names = list(selection.columns)
        else:
            # The similarity section's id, tags and caption columns describe items, never measure them.
            described = {c for c in (spec.index.id_column, spec.index.tags_column, spec.index.caption_column) if c}
            left_out = set(selection.exclude) | special | described | set(chunk.partitions)
            numeric = {c: chunk.holds_numbers(c) for c in columns if c not in left_out}
            names = [c for c, holds in numeric.items() if holds]
            not_numeric = [c for c, holds in numeric.items() if not holds]
        missing = [c for c in [*names, *sorted(special)] if c not in columns]
        if missing:
            raise DataError(f"missing columns {missing}; the file has {columns}")
        if not names:
            held = f" ({', '.join(not_numeric[:LEFT_OUT_NAMES_SHOWN])} hold no numbers)" if not_numeric else ""
            raise DataError(f"no feature columns{held}: list them under `features` or provide numeric columns")
        # Routing key and score column are numeric like the features: a row missing either is malformed.
        extra = [c for c in (spec.routing.key if spec.routing else None, spec.score_column) if c]
        kept = [c for c in columns if c not in set(names)] if spec.indexed else None
        return cls(names, extra, spec.label, kept, not_numeric)


class _Reading:
    """The rows read so far: counted, checked, summarized and sampled chunk by chunk."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.roles: _Roles | None = None
        self.header: list[str] = []
        self.rows = 0  # well-formed records
        self.malformed = 0  # records with the wrong field count
        self.dropped = 0  # well-formed records with a missing or non-numeric value
        self.csv_text = False
        self.figures: ColumnFigures | None = None
        bounds = spec.routing.bounds if spec.routing else []
        self.sample = RowSample(
            spec.training.max_rows,
            groups=max(len(bounds) - 1, 0),
            all_group=spec.routing is None or spec.routing.all_group,
            seed=_seed(spec),
        )

    def add(self, chunk: Chunk, *, csv_text: bool) -> None:
        spec = self.spec
        roles = self.roles = self.roles or _Roles.of(chunk, spec)
        self.figures = self.figures or ColumnFigures(roles.features)
        self.csv_text |= csv_text
        columns = set(chunk.columns)
        wanted = roles.features + roles.numeric_extra
        values = np.column_stack(
            [chunk.numbers(c) if c in columns else np.full(chunk.rows, np.nan) for c in wanted]
        )
        self.figures.add(values[:, : len(roles.features)])
        good = np.isfinite(values).all(axis=1)
        if roles.label:
            good &= chunk.present(roles.label) if roles.label in columns else False
        rows = np.flatnonzero(good)
        self.dropped += chunk.rows - len(rows)
        first_row, self.rows = self.rows, self.rows + chunk.rows
        if not len(rows):
            return
        values = values[rows]
        features = values[:, : len(roles.features)].astype(np.float32)
        if not np.isfinite(features).all():
            raise DataError("feature values overflow float32")
        payload: dict[str, np.ndarray] = {"features": features, "row": first_row + rows}
        group = np.full(len(rows), -1, dtype=np.int64)
        if spec.routing:
            payload["routing"] = values[:, len(roles.features)]
            group = routing_groups(payload["routing"], spec.routing.bounds)
        if spec.score_column:
            payload["targets"] = values[:, len(roles.features) + roles.numeric_extra.index(spec.score_column)]
        if roles.label:
            payload["labels"] = chunk.frame([roles.label], rows)[roles.label].to_numpy().astype(str)
        frame = None
        if roles.described is not None:
            frame = chunk.frame([c for c in roles.described if c in columns], rows)
        self.sample.offer(group, payload, frame)

    def dataset(self, files: list[Path]) -> Dataset:
        spec, seen = self.spec, self.rows + self.malformed
        if self.roles is None or self.rows == 0:
            if self.malformed:
                raise DataError(
                    f"{self.malformed} of {self.malformed} rows (100%) are malformed (wrong field count: the "
                    f"header names {len(self.header)} columns)"
                )
            raise DataError("the data has no rows")
        dropped = self.dropped + self.malformed
        if self.dropped == self.rows:
            raise DataError(f"no usable rows: all {self.rows} rows have missing or non-numeric values")
        share = dropped / seen
        if share > spec.validation.max_bad_row_fraction:
            raise DataError(
                f"{dropped} of {seen} rows ({share:.0%}) are malformed (missing, non-numeric or "
                f"wrong field count), more than max_bad_row_fraction {spec.validation.max_bad_row_fraction:.0%}"
            )
        sampled = self.sample.result()
        payload = sampled.payload
        used = len(sampled.membership)
        notes = [f"dropped {dropped} malformed rows"] if dropped else []
        if used < self.rows - self.dropped:
            notes.append(f"trained on a uniform sample of {used} of {self.rows - self.dropped} rows")
        assert self.figures is not None
        dataset = Dataset(
            features=payload["features"],
            feature_names=self.roles.features,
            labels=payload.get("labels"),
            routing=payload.get("routing"),
            files=files,
            dropped_rows=dropped,
            notes=notes,
            targets=payload.get("targets"),
            rows_seen=seen,
            membership=sampled.membership,
            column_figures=self.figures.as_dict(),
            left_out_columns=self.roles.not_numeric,
        )
        if spec.indexed:  # a row's default id is its number among the rows read, 1 the first
            dataset.item_ids = [str(i + 1) for i in payload["row"]]
            frame = sampled.frame if sampled.frame is not None else pd.DataFrame(index=range(used))
            if self.csv_text:  # CSV cells came as text: typed as pandas types a CSV's columns
                frame = pd.read_csv(io.StringIO(frame.to_csv(index=False))) if len(frame.columns) else frame
            dataset.item_table = frame
        return dataset
