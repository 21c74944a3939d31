"""Image and text datasets turned into training rows: the items (a folder of images with a
metadata CSV or one subfolder per value, or a CSV of texts) -> vectors from the embedder (in
batches, cached by content hash) -> rows with the extra numeric columns appended, and for
classifiers the label (and score column) of each item. Each row keeps its item's default id
and metadata row for the similarity index (index_items.py).

An item the embedder refuses (an undecodable image, an empty text) is dropped and counted;
the rest of its batch is embedded one by one.

Images are read when needed (for their digest, then for their batch), never all held at
once. Up to `batches_in_flight` batches are at the embedder at once (so several embedder
replicas work on one job, and the items in flight stay bounded); their vectors are taken, and
cached, in the order of the items.

Reason to change: how image and text items become rows.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar, overload

import numpy as np
import pandas as pd

from oddity.common.clients import EmbedderModel
from oddity.common.errors import FailedPrecondition, InvalidArgument
from oddity.trainer import job_control
from oddity.trainer.data import DataError, Dataset, inside, read_csv_text
from oddity.trainer.embedding_cache import EmbeddingCache, content_digest
from oddity.trainer.spec import DatasetSpec, ImageSource, TextSource
from oddity.v1 import manifest_pb2

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}

T = TypeVar("T")
R = TypeVar("R")


class ItemEmbedder(Protocol):
    """What a dataset needs of the embedder (blocking calls, safe from several threads at once;
    see job_embedder.JobEmbedder)."""

    batches_in_flight: int  # embed calls that may run at once

    def model(self, name: str) -> EmbedderModel: ...

    def embed(self, model: str, modality: str, contents: Sequence[bytes]) -> np.ndarray:
        """Vectors [items, dimension]; raises InvalidArgument when an item is refused."""
        ...


@dataclass
class _Items:
    contents: Sequence[bytes]  # encoded images (read on access) or UTF-8 text
    names: list[str]  # file name or row number, for messages
    table: pd.DataFrame  # extra columns, one row per item
    ids: list[str]  # default item ids: the image's file (as listed, or under the images folder), the text's row


@dataclass
class Embedded:
    """Vectors of a list of contents, position by position."""

    vectors: list[np.ndarray | None]  # None: refused by the embedder
    refused: list[int]
    sent: int  # contents the embedder was asked for (the others came from the cache)


def _read_table(folder: Path, relative: str, what: str) -> pd.DataFrame:
    """A metadata or text CSV inside the dataset folder, read strictly (data.read_csv_text)."""
    path = inside(folder, folder / relative, what)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{what} {relative!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{relative} cannot be read: {exc}") from exc
    table, _ = read_csv_text(text)
    return table


def _image_items(folder: Path, source: ImageSource, label: str | None = None) -> _Items:
    root = inside(folder, folder / source.path, "images.path")
    if not root.is_dir():
        raise DataError(f"image folder {source.path!r} not found")
    paths: list[Path] = []
    ids: list[str] = []
    if source.folder_column:
        rows = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            value: float | str
            if source.folder_column == label:
                value = sub.name  # one subfolder per class: images/High/a.png
            else:
                try:
                    value = float(sub.name)
                except ValueError:
                    raise DataError(f"subfolder {sub.name!r} is not a number for {source.folder_column!r}") from None
            for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                paths.append(path)
                ids.append(path.relative_to(root).as_posix())
                rows.append({source.folder_column: value})
        table = pd.DataFrame(rows)
    else:
        table = _read_table(folder, source.metadata or "", "images.metadata")
        if source.file_column not in table.columns:
            raise DataError(f"{source.metadata} has no {source.file_column!r} column")
        paths = [root / str(name) for name in table[source.file_column]]
        ids = [str(name) for name in table[source.file_column]]
    if not paths:
        raise DataError(f"no images under {source.path!r}")
    for path in paths:
        inside(folder, path, "image")
    keep = [i for i, path in enumerate(paths) if path.is_file()]  # listed but missing: dropped and counted
    files = [paths[i] for i in keep]
    return _Items(
        FileContents(files), [p.name for p in files], table.iloc[keep].reset_index(drop=True), [ids[i] for i in keep]
    )


class FileContents(Sequence[bytes]):
    """The bytes of files, read each time one is asked for, so a dataset's images are never all
    in memory. A file that cannot be read reads as empty, which the embedder refuses: the item
    is dropped and counted as unreadable."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        try:
            return self.paths[index].read_bytes()
        except OSError:
            return b""


def _text_items(folder: Path, source: TextSource) -> _Items:
    table = _read_table(folder, source.path, "texts.path")
    if source.text_column not in table.columns:
        raise DataError(f"{source.path} has no {source.text_column!r} column")
    present = (table[source.text_column].astype(str).str.strip() != "").to_numpy()
    rows = np.flatnonzero(present)  # the row numbers before empty texts are left out
    table = table[present].reset_index(drop=True)
    texts = table[source.text_column].astype(str).tolist()
    return _Items([t.encode() for t in texts], [f"row {i + 2}" for i in rows], table, [str(i + 1) for i in rows])


def load_item_dataset(
    folder: Path, spec: DatasetSpec, embedder: ItemEmbedder, cache: EmbeddingCache
) -> tuple[Dataset, manifest_pb2.EmbeddingSource, dict[str, int]]:
    """Rows for training an image or text dataset; also what made the vectors and cache stats."""
    if spec.images is not None:
        items, modality = _image_items(folder, spec.images, spec.label), "image"
    elif spec.texts is not None:
        items, modality = _text_items(folder, spec.texts), "text"
    else:
        raise ValueError("the spec names no images or texts")
    info = embedder.model(spec.embedder.model)
    if info.modality != modality:
        raise FailedPrecondition(f"embedder model {info.name!r} embeds {info.modality}s, the dataset holds {modality}s")
    embedded = embed_cached(embedder, info, items.contents, cache, spec.embedder.batch_size)
    dropped = embedded.refused
    good = [(i, v) for i, v in enumerate(embedded.vectors) if v is not None]  # refused items got no vector
    if not good:
        raise DataError(f"no item could be embedded ({len(dropped)} unreadable)")
    extra_names = list(spec.extra_features)
    routing_key = spec.routing.key if spec.routing else None
    needed = [*extra_names]
    for column in (routing_key, spec.score_column):
        if column and column not in needed:
            needed.append(column)
    missing_columns = [c for c in [*needed, *([spec.label] if spec.label else [])] if c not in items.table.columns]
    if missing_columns:
        raise DataError(f"missing columns {missing_columns}; the metadata has {list(items.table.columns)}")
    table = items.table.iloc[[i for i, _ in good]].reset_index(drop=True)
    numeric = (
        table[needed].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64) if needed else np.empty((len(good), 0))
    )
    usable = np.isfinite(numeric).all(axis=1)
    if spec.label:  # an item without its class teaches nothing: dropped and counted
        usable &= table[spec.label].notna().to_numpy() & (table[spec.label].astype(str).str.strip() != "").to_numpy()
    matrix = np.vstack([v for _, v in good])[usable]
    extra = numeric[usable][:, : len(extra_names)]
    features = np.hstack([matrix, extra]).astype(np.float32)
    routing = numeric[usable][:, needed.index(routing_key)] if routing_key else None
    names = [f"{modality}_{i}" for i in range(info.dimension)] + extra_names
    skipped = len(items.contents) - len(good) + int((~usable).sum())
    dataset = Dataset(
        features=features,
        feature_names=names,
        labels=table[spec.label].to_numpy()[usable].astype(str) if spec.label else None,
        routing=routing,
        files=[],
        dropped_rows=skipped,
        notes=[f"unreadable: {', '.join(items.names[i] for i in dropped[:5])}"] if dropped else [],
        targets=numeric[usable][:, needed.index(spec.score_column)] if spec.score_column else None,
    )
    if spec.indexed:
        dataset.item_table = table[usable].reset_index(drop=True)
        dataset.item_ids = [items.ids[good[k][0]] for k in np.flatnonzero(usable)]
    source = manifest_pb2.EmbeddingSource(
        model=info.name,
        model_id=info.model_id,
        revision=info.revision,
        dimension=info.dimension,
        modality=modality,
        extra_features=extra_names,
    )
    stats = {
        "items": len(items.contents),
        "embedded": embedded.sent - len(dropped),
        "cached": len(items.contents) - embedded.sent,
        "refused": len(dropped),
    }
    return dataset, source, stats


def embed_cached(
    embedder: ItemEmbedder, info: EmbedderModel, contents: Sequence[bytes], cache: EmbeddingCache, batch_size: int
) -> Embedded:
    """Vectors of `contents` (encoded images, or UTF-8 texts) from `info`'s model: from the
    cache, the rest from the embedder in batches of `batch_size` (and cached)."""
    cache_folder = cache.folder(info)
    digests = [content_digest(c) for c in contents]
    vectors: list[np.ndarray | None] = [cache.get(cache_folder, d) for d in digests]
    missing = [i for i, v in enumerate(vectors) if v is None or v.shape != (info.dimension,)]
    for i in missing:
        vectors[i] = None  # a cached vector of another shape is stale
    refused: list[int] = []
    chunks = [missing[start : start + batch_size] for start in range(0, len(missing), batch_size)]

    def embed(chunk: list[int]) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
        return _embed_chunk(embedder, info.name, info.modality, contents, chunk)

    for embedded, dropped in in_order(embed, chunks, embedder.batches_in_flight):
        job_control.check()  # a stop or a spent time budget ends the job between batches
        for index, vector in embedded:  # each batch cached as it arrives: a re-run after a crash resumes here
            vectors[index] = vector
            cache.put(cache_folder, digests[index], vector)
        refused.extend(dropped)
    return Embedded(vectors, refused, len(missing))


def in_order(work: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[R]:
    """work(item) for each item, up to `depth` at once on threads of their own, the results in
    the items' order. A failure is raised at its item; the items not started yet never start."""
    if depth <= 1:
        yield from map(work, items)
        return
    with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="oddity-embed") as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                if len(pending) >= depth:
                    yield pending.popleft().result()
                # The job's context (its log fields) goes with each call.
                pending.append(pool.submit(contextvars.copy_context().run, work, item))
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _embed_chunk(
    embedder: ItemEmbedder, model: str, modality: str, contents: Sequence[bytes], chunk: list[int]
) -> tuple[list[tuple[int, np.ndarray]], list[int]]:
    """Embed a batch: (index, vector) of each item, and the items refused. When the embedder
    refuses the batch (a bad item), its items are embedded one by one."""
    try:
        rows = embedder.embed(model, modality, [contents[i] for i in chunk])
        return list(zip(chunk, rows, strict=True)), []
    except InvalidArgument:
        pass
    result, dropped = [], []
    for index in chunk:
        try:
            result.append((index, embedder.embed(model, modality, [contents[index]])[0]))
        except InvalidArgument:
            dropped.append(index)
    return result, dropped
