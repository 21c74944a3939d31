"""Versions with a similarity index, published through the bundle contract: a plain anomaly
model over the vectors plus the index the trainer's builder makes of them.

Reason to change: how tests make indexed versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oddity.trainer import bundle_writer
from oddity.trainer.index_builder import IndexItems, IndexSettings, TextEmbedder, build_index
from oddity.v1 import manifest_pb2
from tests.support.models import group_proto, random_autoencoder, timing_group


def publish_indexed(
    repository: Path,
    name: str,
    vectors: np.ndarray,
    *,
    ids: Sequence[str] | None = None,
    metadata: Mapping[str, Sequence[Any]] | None = None,
    tags: Sequence[Sequence[str]] | None = None,
    captions: Sequence[str] | None = None,
    settings: IndexSettings | None = None,
    text_embedder: TextEmbedder | None = None,
    text_model: manifest_pb2.EmbeddingSource | None = None,
    space: str = "embedding",
    embedding: manifest_pb2.EmbeddingSource | None = None,
) -> int:
    """Publish a complete version whose index holds `vectors` (ids default to "item-<i>");
    `embedding`: the embedder model the vectors came from (image and text queries use it).
    Returns the version's number."""
    vectors = np.asarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    built = build_index(
        IndexItems(
            ids=list(ids) if ids is not None else [f"item-{i}" for i in range(n)],
            vectors=vectors,
            metadata={k: list(v) for k, v in (metadata or {}).items()},
            tags=[list(t) for t in tags] if tags is not None else None,
            captions=list(captions) if captions is not None else None,
        ),
        space=space,
        settings=settings or IndexSettings(),
        text_embedder=text_embedder,
        text_model=text_model,
    )
    fitted = timing_group(random_autoencoder(d, hidden=(8,)))
    manifest = manifest_pb2.ModelManifest(
        name=name,
        kind="autoencoder",
        task=manifest_pb2.MODEL_TASK_ANOMALY_DETECTION,
        input_dimension=d,
        dataset=name,
    )
    if embedding is not None:
        manifest.embedding.CopyFrom(embedding)
    manifest.groups.append(group_proto("all", fitted))
    manifest.similarity.CopyFrom(built.index)
    manifest.created_at.GetCurrentTime()
    return bundle_writer.publish_version(repository, manifest, {"all.onnx": fitted.onnx, **built.files})
