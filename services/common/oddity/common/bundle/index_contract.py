"""The similarity part of the bundle contract: what a version's index files hold and how
vectors enter the index's space. The trainer builds the files (`oddity.trainer.index_builder`),
the detector serves them (`oddity.detector.item_index`); both normalize with `normalize` here.

Files (plain names in the version folder, each with a sha256 in manifest.similarity):
  index_vectors.npy       float32 [items, dimension], normalized, catalog order (.npy, no pickles)
  index_hnsw.faiss        FAISS HNSW index over those vectors (FAISS's own binary format)
  index_catalog.pb        ItemCatalog, binary protobuf (a text dataset's texts cut to SHOWN_TEXT
                          characters: an index of long documents stays small)
  index_text_vectors.npy  float32 text-model vectors of the tags, then of the captions

Reason to change: what an index file holds or how vectors are normalized.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from oddity.common.bundle.errors import BundleError
from oddity.v1 import manifest_pb2

VECTORS_FILE = "index_vectors.npy"
APPROXIMATE_FILE = "index_hnsw.faiss"
CATALOG_FILE = "index_catalog.pb"
TEXT_VECTORS_FILE = "index_text_vectors.npy"

EMBEDDING_SPACE = "embedding"
FEATURES_SPACE = "features"
NO_CLUSTER = -1
SHOWN_TEXT = 200  # characters of an item's caption or text kept and answered with it


def normalize(vectors: np.ndarray, center: np.ndarray | None = None, scale: np.ndarray | None = None) -> np.ndarray:
    """float32 [N, D]: (v - center) / scale, L2-normalized (a zero row stays zero)."""
    out = np.asarray(vectors, dtype=np.float32)
    if center is not None and center.size:
        out = out - center
    if scale is not None and scale.size:
        out = out / scale
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


def shown_text(text: str) -> str:
    """An item's caption or text as the index keeps and answers it: its first SHOWN_TEXT characters."""
    return text[:SHOWN_TEXT]


def normalize_tag(tag: str) -> str:
    """A tag as the index stores it and queries name it: trimmed, lower-case."""
    return tag.strip().lower()


def index_normalization(index: manifest_pb2.SimilarityIndex) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) of an index, as float32 arrays (scale may be empty)."""
    return np.asarray(index.center, dtype=np.float32), np.asarray(index.scale, dtype=np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def read_npy(data: bytes, *, what: str) -> np.ndarray:
    """A float32 .npy array; never unpickles (object arrays are refused)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{what} is not a .npy array: {exc}") from exc
    if array.dtype != np.float32:
        raise BundleError(f"{what} holds {array.dtype}, not float32")
    return array


def read_catalog(data: bytes) -> manifest_pb2.ItemCatalog:
    try:
        return manifest_pb2.ItemCatalog.FromString(data)
    except DecodeError as exc:
        raise BundleError(f"{CATALOG_FILE} is not an ItemCatalog: {exc}") from exc


def index_files(manifest: manifest_pb2.ModelManifest) -> list[manifest_pb2.BundleFile]:
    """The index's files named by a manifest (none without an index)."""
    if not manifest.HasField("similarity"):
        return []
    index = manifest.similarity
    return [f for f in (index.vectors, index.approximate, index.catalog, index.text_vectors) if f.file]


def validate_index(manifest: manifest_pb2.ModelManifest) -> None:
    """Raise BundleError when manifest.similarity contradicts itself."""
    if not manifest.HasField("similarity"):
        return
    index = manifest.similarity
    where = "similarity index"
    if index.space not in (EMBEDDING_SPACE, FEATURES_SPACE):
        raise BundleError(f"{where}: unknown space {index.space!r}")
    if index.items <= 0 or index.dimension <= 0:
        raise BundleError(f"{where}: items and dimension must be positive")
    if len(index.center) not in (0, index.dimension) or len(index.scale) not in (0, index.dimension):
        raise BundleError(f"{where}: center and scale need {index.dimension} values each")
    if not index.vectors.file or not index.catalog.file:
        raise BundleError(f"{where}: the vectors and catalog files are required")
    if bool(index.text_vectors.file) != bool(index.text_model.model):
        raise BundleError(f"{where}: text_vectors and text_model go together")
    for entry in index_files(manifest):
        if Path(entry.file).name != entry.file or entry.file.startswith(".") or entry.file == "manifest.json":
            raise BundleError(f"{where}: {entry.file!r} must be a plain file name")
        if not re.fullmatch(r"[0-9a-f]{64}", entry.sha256):
            raise BundleError(f"{where}: sha256 of {entry.file} must be 64 lower-case hex digits")


def validate_catalog(catalog: manifest_pb2.ItemCatalog, items: int, dimension: int) -> None:
    """Raise BundleError when a catalog does not describe `items` items of `dimension` values
    position by position: a value per item in every column, indices within range, centroids of
    the index's dimension."""
    if len(catalog.ids) != items:
        raise BundleError(f"{CATALOG_FILE}: {len(catalog.ids)} ids for {items} items")
    if len(set(catalog.ids)) != items:
        raise BundleError(f"{CATALOG_FILE}: item ids are not unique")
    for column in catalog.metadata:
        values = len(column.numbers) if column.numeric else len(column.text)
        if values != items:
            raise BundleError(f"{CATALOG_FILE}: metadata column {column.name!r} has {values} values for {items} items")
    if catalog.item_tags and len(catalog.item_tags) != items:
        raise BundleError(f"{CATALOG_FILE}: {len(catalog.item_tags)} tag sets for {items} items")
    if len(catalog.tag_counts) != len(catalog.tag_names):
        raise BundleError(f"{CATALOG_FILE}: tag_counts and tag_names differ in length")
    if catalog.item_clusters and len(catalog.item_clusters) != items:
        raise BundleError(f"{CATALOG_FILE}: {len(catalog.item_clusters)} cluster labels for {items} items")
    if catalog.captions and len(catalog.captions) != items:
        raise BundleError(f"{CATALOG_FILE}: {len(catalog.captions)} captions for {items} items")
    if catalog.texts and len(catalog.texts) != items:
        raise BundleError(f"{CATALOG_FILE}: {len(catalog.texts)} texts for {items} items")
    n_tags = len(catalog.tag_names)
    where = CATALOG_FILE
    if any(t < 0 or t >= n_tags for s in catalog.item_tags for t in s.tags):
        raise BundleError(f"{where}: an item's tag is outside the {n_tags} tag names")
    for pair in catalog.tag_pairs:
        if not (0 <= pair.a < n_tags and 0 <= pair.b < n_tags) or not (pair.lift > 0 and math.isfinite(pair.lift)):
            raise BundleError(f"{where}: tag pair ({pair.a}, {pair.b}) is out of range or has lift {pair.lift}")
    ids = {c.id for c in catalog.clusters}
    if len(ids) != len(catalog.clusters):
        raise BundleError(f"{where}: cluster ids are not unique")
    if any(c != NO_CLUSTER and c not in ids for c in set(catalog.item_clusters)):
        raise BundleError(f"{where}: an item belongs to a cluster the catalog does not describe")
    for cluster in catalog.clusters:
        if len(cluster.centroid) != dimension:
            raise BundleError(f"{where}: cluster {cluster.id} has a centroid of {len(cluster.centroid)} values")
        if any(r < 0 or r >= items for r in cluster.representatives):
            raise BundleError(f"{where}: cluster {cluster.id} names a representative outside the items")
