"""Image and text datasets: items -> vectors from the embedder (over gRPC, in batches, cached
by content hash so unchanged files are never embedded again) -> rows with the extra numeric
columns appended."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pandas as pd

from oddity.common.tensors import tensor_to_array
from oddity.trainer.data import DataError, Dataset
from oddity.trainer.spec import DatasetSpec
from oddity.v1 import embedder_pb2, embedder_pb2_grpc, manifest_pb2

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}


class EmbedderUnavailable(Exception):
    """The embedder cannot be reached or does not serve the model the spec names."""


@dataclass
class _Items:
    contents: list[bytes]  # encoded images or UTF-8 text
    names: list[str]  # file name or row number, for messages
    table: pd.DataFrame  # extra columns, one row per item


def _image_items(folder: Path, spec: DatasetSpec) -> _Items:
    source = spec.images
    root = folder / source.path
    if not root.is_dir():
        raise DataError(f"image folder {source.path!r} not found")
    if source.folder_column:
        rows, paths = [], []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                value = float(sub.name)
            except ValueError:
                raise DataError(f"subfolder {sub.name!r} is not a number for {source.folder_column!r}") from None
            for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
                paths.append(path)
                rows.append({source.folder_column: value})
        table = pd.DataFrame(rows)
    else:
        metadata = folder / (source.metadata or "")
        try:
            table = pd.read_csv(metadata)
        except FileNotFoundError:
            raise DataError(f"metadata file {source.metadata!r} not found") from None
        except Exception as exc:
            raise DataError(f"{source.metadata} cannot be read: {exc}") from exc
        if source.file_column not in table.columns:
            raise DataError(f"{source.metadata} has no {source.file_column!r} column")
        paths = [root / str(name) for name in table[source.file_column]]
    if not paths:
        raise DataError(f"no images under {source.path!r}")
    contents, names, keep = [], [], []
    for i, path in enumerate(paths):
        try:
            contents.append(path.read_bytes())
        except OSError:
            continue  # listed but missing: dropped and counted
        names.append(path.name)
        keep.append(i)
    return _Items(contents, names, table.iloc[keep].reset_index(drop=True))


def _text_items(folder: Path, spec: DatasetSpec) -> _Items:
    source = spec.texts
    try:
        table = pd.read_csv(folder / source.path)
    except Exception as exc:
        raise DataError(f"{source.path} cannot be read: {exc}") from exc
    if source.text_column not in table.columns:
        raise DataError(f"{source.path} has no {source.text_column!r} column")
    table = table[table[source.text_column].astype(str).str.strip() != ""].reset_index(drop=True)
    texts = table[source.text_column].astype(str).tolist()
    return _Items([t.encode() for t in texts], [f"row {i + 2}" for i in range(len(texts))], table)


class EmbeddingCache:
    """Vectors by content hash, one .npy per item, under a folder per embedder model+revision."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, info: embedder_pb2.ModelInfo) -> Path:
        key = hashlib.sha256(f"{info.model_id}\n{info.revision}\n{info.precision}".encode()).hexdigest()[:20]
        return self.root / f"{info.name}-{key}"

    @staticmethod
    def _path(folder: Path, digest: str) -> Path:
        return folder / digest[:2] / f"{digest}.npy"

    def get(self, folder: Path, digest: str) -> np.ndarray | None:
        try:
            return np.load(self._path(folder, digest))
        except (FileNotFoundError, ValueError, OSError):
            return None

    def put(self, folder: Path, digest: str, vector: np.ndarray) -> None:
        path = self._path(folder, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp.npy")
        np.save(temporary, vector.astype(np.float32))
        temporary.replace(path)


class EmbedderConnection:
    def __init__(self, target: str, timeout: float = 120.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            target,
            options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)],
        )
        self.stub = embedder_pb2_grpc.EmbedderStub(self._channel)

    def info(self, model: str) -> embedder_pb2.ModelInfo:
        try:
            models = self.stub.GetInfo(embedder_pb2.GetInfoRequest(model=model), timeout=10).models
        except grpc.RpcError as exc:
            raise EmbedderUnavailable(f"embedder at {self.target}: {exc.code().name}: {exc.details()}") from exc
        return models[0]

    def embed(self, model: str, modality: str, contents: list[bytes]) -> np.ndarray:
        items = [
            embedder_pb2.EmbedItem(image=c) if modality == "image" else embedder_pb2.EmbedItem(text=c.decode())
            for c in contents
        ]
        response = self.stub.Embed(embedder_pb2.EmbedRequest(model=model, items=items), timeout=self.timeout)
        return tensor_to_array(response.embeddings, field="embeddings")

    def close(self) -> None:
        self._channel.close()


def load_embedded_dataset(
    folder: Path, spec: DatasetSpec, connection: EmbedderConnection, cache: EmbeddingCache
) -> tuple[Dataset, manifest_pb2.EmbeddingSource, dict[str, int]]:
    """Rows for training an image or text dataset; also what made the vectors and cache stats."""
    items = _image_items(folder, spec) if spec.images is not None else _text_items(folder, spec)
    modality = "image" if spec.images is not None else "text"
    info = connection.info(spec.embedder.model)
    if info.modality != modality:
        raise EmbedderUnavailable(
            f"embedder model {info.name!r} embeds {info.modality}s, the dataset holds {modality}s"
        )
    cache_folder = cache.folder(info)
    digests = [hashlib.sha256(c).hexdigest() for c in items.contents]
    vectors: list[np.ndarray | None] = [cache.get(cache_folder, d) for d in digests]
    missing = [i for i, v in enumerate(vectors) if v is None or v.shape != (info.dimension,)]
    dropped: list[int] = []
    size = spec.embedder.batch_size
    for start in range(0, len(missing), size):
        chunk = missing[start : start + size]
        for index, vector in _embed_chunk(connection, info.name, modality, items, chunk, dropped):
            vectors[index] = vector
            cache.put(cache_folder, digests[index], vector)
    good = [i for i, v in enumerate(vectors) if v is not None]  # unreadable items got no vector
    if not good:
        raise DataError(f"no item could be embedded ({len(dropped)} unreadable)")
    extra_names = list(spec.extra_features)
    routing_key = spec.routing.key if spec.routing else None
    needed = [*extra_names, *([routing_key] if routing_key and routing_key not in extra_names else [])]
    missing_columns = [c for c in needed if c not in items.table.columns]
    if missing_columns:
        raise DataError(f"missing columns {missing_columns}; the metadata has {list(items.table.columns)}")
    table = items.table.iloc[good].reset_index(drop=True)
    numeric = (
        table[needed].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64) if needed else np.empty((len(good), 0))
    )
    finite = np.isfinite(numeric).all(axis=1)
    matrix = np.vstack([vectors[i] for i in good])[finite]
    extra = numeric[finite][:, : len(extra_names)]
    features = np.hstack([matrix, extra]).astype(np.float32)
    routing = numeric[finite][:, needed.index(routing_key)] if routing_key else None
    names = [f"{modality}_{i}" for i in range(info.dimension)] + extra_names
    skipped = len(items.contents) - len(good) + int((~finite).sum())
    dataset = Dataset(
        features=features,
        feature_names=names,
        labels=None,
        routing=routing,
        files=[],
        dropped_rows=skipped,
        notes=[f"unreadable: {', '.join(items.names[i] for i in dropped[:5])}"] if dropped else [],
    )
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
        "embedded": len(missing) - len(dropped),
        "cached": len(items.contents) - len(missing),
    }
    return dataset, source, stats


def _embed_chunk(connection, model, modality, items, chunk, dropped):
    """Embed a batch; when the embedder refuses it (a bad item), embed one by one and drop the bad ones."""
    try:
        rows = connection.embed(model, modality, [items.contents[i] for i in chunk])
        return list(zip(chunk, rows, strict=True))
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
            raise EmbedderUnavailable(f"embedder at {connection.target}: {exc.code().name}: {exc.details()}") from exc
    result = []
    for index in chunk:
        try:
            result.append((index, connection.embed(model, modality, [items.contents[index]])[0]))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise EmbedderUnavailable(f"embedder at {connection.target}: {exc.details()}") from exc
            dropped.append(index)
    return result
