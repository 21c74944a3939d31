"""Vectors of embedded items by content hash, so unchanged images and texts are never
embedded again: one .npy per item under `<data volume>/.oddity/embeddings/`, in a folder per
embedder model (name, model id, revision, precision).

Reason to change: how embedding vectors are stored and found again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from oddity.common.clients import EmbedderModel


def content_digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class EmbeddingCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, model: EmbedderModel) -> Path:
        key = hashlib.sha256(f"{model.model_id}\n{model.revision}\n{model.precision}".encode()).hexdigest()[:20]
        return self.root / f"{model.name}-{key}"

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
