"""Building a version's similarity index from a dataset's items: their vectors normalized into
the index's space, an approximate (HNSW) index past `approximate_from` items, the clusters of
recurring items (HDBSCAN), tag statistics (counts, co-occurrence with lift and PMI) and the
text-model vectors of tags and captions for text search. The files and their meaning are the
bundle contract's (`oddity.common.bundle.index_contract`).

Reason to change: how the index, the clusters or the tag statistics are built.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from oddity.common.bundle import index_contract as contract
from oddity.v1 import manifest_pb2

# HDBSCAN's cost grows with the square of the items: past this many, the clusters are found
# on a random sample and the other items join the nearest cluster (or none).
CLUSTER_SAMPLE = 5000
# HDBSCAN runs on the sample projected onto this many principal components: 20x faster than
# on 512-768 dimensions, with the same clusters on the embedding sets (centroids and radii
# are still taken in the full space).
CLUSTER_DIMENSIONS = 32
# Members whose HDBSCAN membership is at least this are the cluster's core: representatives
# are chosen among them.
CORE_PROBABILITY = 0.9
REPRESENTATIVES = 10
TOP_TAGS = 5
# A new item is "new" beyond median + RADIUS_MADS robust standard deviations of the members'
# distances to their centroid.
RADIUS_MADS = 3.0

TextEmbedder = Callable[[list[str]], np.ndarray]


@dataclass
class IndexItems:
    """The items of a dataset, position by position."""

    ids: list[str]
    vectors: np.ndarray  # [N, D] raw vectors: embeddings, or table rows
    metadata: dict[str, list[Any]] = field(default_factory=dict)  # column -> N values
    tags: list[list[str]] | None = None
    captions: list[str] | None = None


@dataclass(frozen=True)
class IndexSettings:
    # HNSW from this many items, exact search below: bench/similarity.py measured HNSW at 2x exact's
    # queries/s from 5,000 items (recall@10 >= 0.999 on the embedding sets).
    approximate_from: int = 5_000
    min_cluster_size: int = 0  # 0: max(5, 2% of the items clustered)
    min_cooccurrence: int = 5  # pairs of tags seen together fewer times are not trusted
    hnsw_m: int = 16
    ef_construction: int = 128
    ef_search: int = 64
    seed: int = 0


@dataclass
class BuiltIndex:
    index: manifest_pb2.SimilarityIndex  # sha256 fields are the publisher's to fill
    files: dict[str, bytes]


_TAG_SEPARATORS = re.compile(r"[,;]")


def split_tags(value: object) -> list[str]:
    """Tags of one item from a tags cell: comma- or semicolon-separated, trimmed, lower-cased,
    each once, in order. A missing cell has none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    tags: list[str] = []
    for part in _TAG_SEPARATORS.split(str(value)):
        tag = contract.normalize_tag(part)
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def build_index(
    items: IndexItems,
    *,
    space: str,
    settings: IndexSettings = IndexSettings(),
    text_embedder: TextEmbedder | None = None,
    text_model: manifest_pb2.EmbeddingSource | None = None,
) -> BuiltIndex:
    """The index of `items` in `space` ("embedding": centred; "features": standardized per
    column), with its files. Raises ValueError for items that cannot be indexed."""
    vectors = _check_items(items)
    n, d = vectors.shape
    center = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
    scale = np.empty(0, dtype=np.float32)
    if space == contract.FEATURES_SPACE:
        std = vectors.std(axis=0, dtype=np.float64)
        scale = np.where(std > 1e-12, std, 1.0).astype(np.float32)
    elif space != contract.EMBEDDING_SPACE:
        raise ValueError(f"unknown index space {space!r}")
    normalized = contract.normalize(vectors, center, scale)

    index = manifest_pb2.SimilarityIndex(
        space=space, items=n, dimension=d, center=center.tolist(), scale=scale.tolist()
    )
    files = {contract.VECTORS_FILE: contract.npy_bytes(normalized)}
    index.vectors.file = contract.VECTORS_FILE
    if n >= settings.approximate_from:
        files[contract.APPROXIMATE_FILE] = _hnsw_bytes(normalized, settings)
        index.approximate.file = contract.APPROXIMATE_FILE
        index.hnsw.CopyFrom(
            manifest_pb2.HnswParameters(
                m=settings.hnsw_m, ef_construction=settings.ef_construction, ef_search=settings.ef_search
            )
        )

    catalog = manifest_pb2.ItemCatalog(ids=items.ids)
    for name, values in items.metadata.items():
        catalog.metadata.append(_metadata_column(name, values, n))
    if items.tags is not None:
        _add_tags(catalog, items.tags, settings.min_cooccurrence)
    if items.captions is not None:
        catalog.captions.extend(str(c) for c in items.captions)
    _add_clusters(catalog, normalized, settings)
    contract.validate_catalog(catalog, n, d)
    files[contract.CATALOG_FILE] = catalog.SerializeToString()
    index.catalog.file = contract.CATALOG_FILE
    index.clusters = len(catalog.clusters)
    index.tags = len(catalog.tag_names)

    texts = list(catalog.tag_names) + list(catalog.captions)
    if text_embedder is not None and text_model is not None and any(t.strip() for t in texts):
        files[contract.TEXT_VECTORS_FILE] = contract.npy_bytes(_text_vectors(text_embedder, texts))
        index.text_vectors.file = contract.TEXT_VECTORS_FILE
        index.text_model.CopyFrom(text_model)
    return BuiltIndex(index=index, files=files)


def _check_items(items: IndexItems) -> np.ndarray:
    vectors = np.asarray(items.vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise ValueError(f"the index needs vectors [items, dimension], got shape {vectors.shape}")
    n = vectors.shape[0]
    if not np.isfinite(vectors).all():
        raise ValueError("the index's vectors must be finite")
    if len(items.ids) != n:
        raise ValueError(f"{len(items.ids)} ids for {n} vectors")
    duplicates = [i for i, count in Counter(items.ids).items() if count > 1]
    if duplicates:
        raise ValueError(f"item ids must be unique; repeated: {', '.join(map(repr, duplicates[:5]))}")
    for what, values in (("tags", items.tags), ("captions", items.captions)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {what} for {n} items")
    for name, column in items.metadata.items():
        if len(column) != n:
            raise ValueError(f"metadata column {name!r} has {len(column)} values for {n} items")
    return vectors


def _hnsw_bytes(normalized: np.ndarray, settings: IndexSettings) -> bytes:
    import faiss

    index = faiss.IndexHNSWFlat(normalized.shape[1], settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.ef_construction
    index.hnsw.efSearch = settings.ef_search
    index.add(normalized)
    return faiss.serialize_index(index).tobytes()


def _metadata_column(name: str, values: Sequence[Any], n: int) -> manifest_pb2.MetadataColumn:
    """Numbers when every present value is one (missing ones become NaN), else text."""
    numbers = [_number(v) for v in values]
    present = [v for v in values if not _missing(v)]
    if present and all(x is not None for x, v in zip(numbers, values, strict=True) if not _missing(v)):
        filled = [math.nan if x is None else x for x in numbers]
        return manifest_pb2.MetadataColumn(name=name, numeric=True, numbers=filled)
    return manifest_pb2.MetadataColumn(name=name, text=["" if _missing(v) else str(v) for v in values])


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or _missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _add_tags(catalog: manifest_pb2.ItemCatalog, tags: list[list[str]], min_cooccurrence: int) -> None:
    counts = Counter(tag for item in tags for tag in set(item))
    # Most frequent first, then by name: a stable vocabulary for equal data.
    names = sorted(counts, key=lambda t: (-counts[t], t))
    position = {t: i for i, t in enumerate(names)}
    catalog.tag_names.extend(names)
    catalog.tag_counts.extend(counts[t] for t in names)
    n, k = len(tags), len(names)
    present = np.zeros((n, k), dtype=np.float32)
    for i, item in enumerate(tags):
        indices = sorted({position[t] for t in item})
        catalog.item_tags.add(tags=indices)
        present[i, indices] = 1.0
    if k < 2:
        return
    together = present.T @ present  # [k, k] items carrying both tags
    a_idx, b_idx = np.nonzero(np.triu(together >= min_cooccurrence, k=1))
    for a, b in zip(a_idx.tolist(), b_idx.tolist(), strict=True):
        count = int(together[a, b])
        lift = count * n / (counts[names[a]] * counts[names[b]])
        catalog.tag_pairs.add(a=a, b=b, count=count, lift=lift, pmi=math.log(lift))


def _add_clusters(catalog: manifest_pb2.ItemCatalog, normalized: np.ndarray, settings: IndexSettings) -> None:
    """HDBSCAN over the normalized vectors (on a sample past CLUSTER_SAMPLE items); clusters
    numbered largest first; every item's cluster or NO_CLUSTER."""
    from sklearn.cluster import HDBSCAN
    from sklearn.decomposition import PCA

    n = len(normalized)
    rng = np.random.default_rng(settings.seed)
    sample = np.sort(rng.choice(n, CLUSTER_SAMPLE, replace=False)) if n > CLUSTER_SAMPLE else np.arange(n)
    size = settings.min_cluster_size or max(5, round(0.02 * len(sample)))
    labels = np.full(n, contract.NO_CLUSTER, dtype=np.int64)
    if len(sample) <= size:  # too few items for a cluster of the minimum size to stand out
        catalog.item_clusters.extend(labels.tolist())
        return
    points = normalized[sample]
    if points.shape[1] > CLUSTER_DIMENSIONS and len(points) > CLUSTER_DIMENSIONS:
        points = PCA(CLUSTER_DIMENSIONS, random_state=settings.seed).fit_transform(points)
    model = HDBSCAN(min_cluster_size=size, metric="euclidean", copy=True).fit(points)
    found = [c for c in np.unique(model.labels_) if c >= 0]
    found.sort(key=lambda c: -int(np.sum(model.labels_ == c)))
    centroids, radii, members_of = [], [], []
    for c in found:
        members = sample[model.labels_ == c]
        centroid = normalized[members].mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        distances = 1.0 - normalized[members] @ centroid
        median = float(np.median(distances))
        mad = float(np.median(np.abs(distances - median)))
        centroids.append(centroid.astype(np.float32))
        radii.append(median + RADIUS_MADS * 1.4826 * mad)
        members_of.append((members, model.probabilities_[model.labels_ == c]))
    if centroids:
        labels[sample] = [found.index(c) if c >= 0 else contract.NO_CLUSTER for c in model.labels_]
        rest = np.setdiff1d(np.arange(n), sample)
        if len(rest):  # items outside the sample join the nearest cluster within its radius
            similarity = normalized[rest] @ np.stack(centroids).T
            nearest = similarity.argmax(axis=1)
            close = 1.0 - similarity[np.arange(len(rest)), nearest] <= np.asarray(radii)[nearest]
            labels[rest] = np.where(close, nearest, contract.NO_CLUSTER)
    catalog.item_clusters.extend(labels.tolist())
    tag_names = list(catalog.tag_names)
    for cid, (centroid, radius, (members, probabilities)) in enumerate(zip(centroids, radii, members_of, strict=True)):
        everyone = np.flatnonzero(labels == cid)
        core = members[probabilities >= CORE_PROBABILITY]
        candidates = core if len(core) else members
        # The most central core members, the medoid-like one first.
        order = np.argsort(-(normalized[candidates] @ centroid), kind="stable")
        top_tags: list[str] = []
        if catalog.item_tags:
            votes = Counter(tag_names[t] for i in everyone for t in catalog.item_tags[int(i)].tags)
            top_tags = [t for t, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TAGS]]
        catalog.clusters.add(
            id=cid,
            size=len(everyone),
            representatives=candidates[order[:REPRESENTATIVES]].tolist(),
            centroid=centroid.tolist(),
            radius=radius,
            top_tags=top_tags,
        )


def _text_vectors(text_embedder: TextEmbedder, texts: list[str]) -> np.ndarray:
    """L2-normalized text-model vectors of `texts`; an empty text (a missing caption) gets a
    zero vector, which matches nothing."""
    present = [i for i, t in enumerate(texts) if t.strip()]
    embedded = np.asarray(text_embedder([texts[i] for i in present]), dtype=np.float32)
    out = np.zeros((len(texts), embedded.shape[1]), dtype=np.float32)
    out[present] = contract.normalize(embedded)
    return out
