"""Building a version's similarity index from a dataset's items: their vectors normalized into
the index's space, an approximate (HNSW) index past `approximate_from` items, the groups of the
items (`group_items`: a count chosen by silhouette, k-means, each group's reach), tag statistics
(counts, co-occurrence with lift and PMI) and the text-model vectors of tags and captions for
text search. The files and their meaning are the bundle contract's
(`oddity.common.bundle.index_contract`).

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

# Grouping costs grow with the items: past this many, the groups are found on a random sample
# and every item joins its nearest group (or none, beyond its reach).
CLUSTER_SAMPLE = 5000
# The count is chosen on this many of the sample, projected onto CLUSTER_DIMENSIONS principal
# components: Ward's tree and the items' distances cost the square of the items (0.1 s each at
# 2,000; the same count as on the whole sample of the sets in bench/grouping.py). Centroids and
# reaches are taken in the full space.
COUNT_SAMPLE = 2000
CLUSTER_DIMENSIONS = 32
# The most groups a count may have, however small min_cluster_size is.
MAX_CLUSTERS = 50
REPRESENTATIVES = 10
TOP_TAGS = 5
# A robust standard deviation from a median absolute deviation (of a normal distribution).
MAD_TO_DEVIATION = 1.4826
# A new item joins its nearest group within median + NEW_ITEM_REACH robust deviations of the
# members' distances (the catalog's radius), else it is new: stricter than the library's own
# reach, so that what the library lacks is marked new (bench/similarity.py's novel images: 95%
# marked new at 3 deviations, 90% at 4, 70% at 5).
NEW_ITEM_REACH = 3.0

TextEmbedder = Callable[[list[str]], np.ndarray]


@dataclass
class IndexItems:
    """The items of a dataset, position by position."""

    ids: list[str]
    vectors: np.ndarray  # [N, D] raw vectors: embeddings, or table rows
    metadata: dict[str, list[Any]] = field(default_factory=dict)  # column -> N values
    tags: list[list[str]] | None = None
    captions: list[str] | None = None
    texts: list[str] | None = None  # a text dataset's texts, shown with the items (kept cut short)


@dataclass(frozen=True)
class IndexSettings:
    # HNSW from this many items, exact search below: bench/similarity.py measured HNSW at 2x exact's
    # queries/s from 5,000 items (recall@10 >= 0.999 on the embedding sets).
    approximate_from: int = 5_000
    min_cluster_size: int = 0  # 0: max(5, 2% of the items grouped)
    # An item of the library belongs to its nearest group within median + cluster_reach robust
    # deviations of the members' distances to the centroid; farther, to none. Larger: fewer
    # items in no group (bench/grouping.py).
    cluster_reach: float = 5.0
    min_cooccurrence: int = 5  # pairs of tags seen together fewer times are not trusted
    hnsw_m: int = 16
    ef_construction: int = 128
    ef_search: int = 64
    seed: int = 0


@dataclass
class BuiltIndex:
    index: manifest_pb2.SimilarityIndex  # sha256 fields are the publisher's to fill
    files: dict[str, bytes]
    unclustered: int = 0  # items in no group


@dataclass(frozen=True)
class Grouping:
    """The groups of a set of items, largest first: each item's group (NO_CLUSTER: none), and
    each group's L2-normalized centroid and radius (the cosine distance within which a new item
    joins it)."""

    labels: np.ndarray  # int64 [items]
    centroids: np.ndarray  # float32 [groups, dimension]
    radii: np.ndarray  # float64 [groups]

    @property
    def count(self) -> int:
        return len(self.centroids)

    @property
    def unclustered_share(self) -> float:
        return float(np.mean(self.labels == contract.NO_CLUSTER)) if len(self.labels) else 0.0


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
    center, scale = space_normalization(vectors, space)
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
    if items.texts is not None:
        catalog.texts.extend(contract.shown_text(str(t)) for t in items.texts)
    grouping = group_items(normalized, settings)
    _add_clusters(catalog, normalized, grouping)
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
    return BuiltIndex(index=index, files=files, unclustered=int(np.sum(grouping.labels == contract.NO_CLUSTER)))


def space_normalization(vectors: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray]:
    """(center, scale) of float32 `vectors` in `space`: the mean, and for "features" each
    column's standard deviation (1 for a constant column; empty scale for "embedding")."""
    center = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
    if space == contract.EMBEDDING_SPACE:
        return center, np.empty(0, dtype=np.float32)
    if space != contract.FEATURES_SPACE:
        raise ValueError(f"unknown index space {space!r}")
    std = vectors.std(axis=0, dtype=np.float64)
    return center, np.where(std > 1e-12, std, 1.0).astype(np.float32)


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
    for what, values in (("tags", items.tags), ("captions", items.captions), ("texts", items.texts)):
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


def group_items(normalized: np.ndarray, settings: IndexSettings = IndexSettings()) -> Grouping:
    """The groups of L2-normalized item vectors [N, D]. The count is the one whose cut of Ward's
    tree has the best silhouette, from 2 to the most groups of min_cluster_size items (at most
    MAX_CLUSTERS); k-means, started from that cut's means, makes the groups (on a sample past
    CLUSTER_SAMPLE items); a group of fewer than min_cluster_size items is dissolved into the
    others. Each item belongs to its nearest group unless its cosine distance to the group's
    centroid exceeds median + cluster_reach robust deviations of the members' distances (the
    deviation of the far half: distances to a centroid are skewed to the far side); a group's
    radius, for new items, is median + NEW_ITEM_REACH deviations."""
    from sklearn.cluster import KMeans

    n = len(normalized)
    rng = np.random.default_rng(settings.seed)
    sample = np.sort(rng.choice(n, CLUSTER_SAMPLE, replace=False)) if n > CLUSTER_SAMPLE else np.arange(n)
    size = settings.min_cluster_size or max(5, round(0.02 * len(sample)))
    none = Grouping(
        labels=np.full(n, contract.NO_CLUSTER, dtype=np.int64),
        centroids=np.empty((0, normalized.shape[1]), dtype=np.float32),
        radii=np.empty(0),
    )
    points = normalized[sample]
    starts = _count_cut(points, min(MAX_CLUSTERS, len(sample) // size), rng, settings.seed)
    if starts is None:  # too few (distinct) items for two groups of the minimum size
        return none
    model = KMeans(len(starts), init=starts, n_init=1, random_state=settings.seed).fit(points)
    while (small := np.bincount(model.labels_, minlength=model.n_clusters) < size).any():
        kept = model.cluster_centers_[~small]
        model = KMeans(len(kept), init=kept, n_init=1, random_state=settings.seed).fit(points)
    nearest = model.predict(normalized)
    labels = np.full(n, contract.NO_CLUSTER, dtype=np.int64)
    groups: list[tuple[np.ndarray, np.ndarray, float]] = []  # (members, centroid, radius)
    for c in range(model.n_clusters):
        members = np.flatnonzero(nearest == c)
        centroid = normalized[members].mean(axis=0)
        centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
        distances = 1.0 - normalized[members] @ centroid
        median = float(np.median(distances))
        deviation = MAD_TO_DEVIATION * float(np.median(distances[distances >= median] - median))
        reached = members[distances <= median + settings.cluster_reach * deviation]
        groups.append((reached, centroid.astype(np.float32), median + NEW_ITEM_REACH * deviation))
    groups.sort(key=lambda g: -len(g[0]))  # stable: equal sizes keep k-means' order
    for gid, (members, _, _) in enumerate(groups):
        labels[members] = gid
    return Grouping(
        labels=labels,
        centroids=np.stack([g[1] for g in groups]),
        radii=np.asarray([g[2] for g in groups], dtype=np.float64),
    )


def _count_cut(points: np.ndarray, most: int, rng: np.random.Generator, seed: int) -> np.ndarray | None:
    """Full-space means [k, D] of the groups of the Ward cut with the best silhouette among 2 to
    `most` groups, on COUNT_SAMPLE of `points` projected onto CLUSTER_DIMENSIONS components;
    None when no cut makes two groups."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.decomposition import PCA
    from sklearn.metrics import pairwise_distances

    if most < 2 or (points == points[0]).all():  # no two groups of the minimum size, or one item
        return None
    chosen = np.sort(rng.choice(len(points), COUNT_SAMPLE, replace=False)) if len(points) > COUNT_SAMPLE else None
    full = points if chosen is None else points[chosen]
    projected = full
    if full.shape[1] > CLUSTER_DIMENSIONS and len(full) > CLUSTER_DIMENSIONS:
        projected = PCA(CLUSTER_DIMENSIONS, random_state=seed).fit_transform(full)
    tree = AgglomerativeClustering(n_clusters=1, linkage="ward").fit(projected)
    # A silhouette needs from 2 to items - 1 groups.
    cut = _best_cut(tree.children_, pairwise_distances(projected), min(most, len(full) - 1))
    return np.stack([full[cut == c].mean(axis=0) for c in np.unique(cut)])


def _best_cut(children: np.ndarray, distances: np.ndarray, most: int) -> np.ndarray:
    """The labels [n] of the cut of a merge tree (scikit-learn's children_: merge m joins
    children[m] into node n + m) into 2 to `most` groups with the best mean silhouette, given the
    items' distances [n, n]. Each cut undoes one more of the last merges, splitting one group in
    two, so each item's distance sums to the groups are updated for those two only: 0.13 s for
    the 48 cuts of 2,000 items, where scikit-learn's silhouette_score takes 0.025 s per cut."""
    n = len(distances)
    size = np.ones(2 * n - 1, dtype=np.int64)
    for m, (a, b) in enumerate(children):
        size[n + m] = size[a] + size[b]
    # A node's leaves are a contiguous run of one leaf order: the root's run is every leaf, and
    # each child takes its part of its parent's.
    start = np.zeros(2 * n - 1, dtype=np.int64)
    for m in range(n - 2, -1, -1):
        a, b = children[m]
        start[a], start[b] = start[n + m], start[n + m] + size[a]
    order = np.argsort(start[:n])  # the leaves in that order
    labels = np.zeros(n, dtype=np.int64)
    sums = np.zeros((n, most))  # each item's summed distance to each group
    sums[:, 0] = distances.sum(axis=1)
    counts = np.zeros(most)
    counts[0] = n
    best: tuple[float, np.ndarray] = (-math.inf, labels)
    for k in range(2, most + 1):
        _, b = children[n - k]  # the merge undone: its second child's leaves become group k - 1
        moved = order[start[b] : start[b] + size[b]]
        parent = labels[moved[0]]
        labels[moved] = k - 1
        sums[:, k - 1] = distances[:, moved].sum(axis=1)
        sums[:, parent] -= sums[:, k - 1]
        counts[k - 1], counts[parent] = len(moved), counts[parent] - len(moved)
        score = _silhouette(sums[:, :k], counts[:k], labels)
        if score > best[0]:
            best = (score, labels.copy())
    return best[1]


def _silhouette(sums: np.ndarray, counts: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette from each item's summed distances to each group (scikit-learn's
    silhouette_score: 0 for an item alone in its group)."""
    rows = np.arange(len(labels))
    own = counts[labels]
    inside = sums[rows, labels] / np.maximum(own - 1, 1)
    means = sums / counts
    means[rows, labels] = np.inf
    nearest = means.min(axis=1)
    with np.errstate(invalid="ignore"):
        scores = np.where(own > 1, (nearest - inside) / np.maximum(inside, nearest), 0.0)
    return float(np.nan_to_num(scores).mean())


def _add_clusters(catalog: manifest_pb2.ItemCatalog, normalized: np.ndarray, grouping: Grouping) -> None:
    """Every item's group (or NO_CLUSTER) and each group with its most central members, its
    centroid, radius and most frequent tags."""
    catalog.item_clusters.extend(grouping.labels.tolist())
    tag_names = list(catalog.tag_names)
    for cid, (centroid, radius) in enumerate(zip(grouping.centroids, grouping.radii, strict=True)):
        members = np.flatnonzero(grouping.labels == cid)
        # The most central members, the medoid-like one first.
        order = np.argsort(-(normalized[members] @ centroid), kind="stable")
        top_tags: list[str] = []
        if catalog.item_tags:
            votes = Counter(tag_names[t] for i in members for t in catalog.item_tags[int(i)].tags)
            top_tags = [t for t, _ in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_TAGS]]
        catalog.clusters.add(
            id=cid,
            size=len(members),
            representatives=members[order[:REPRESENTATIVES]].tolist(),
            centroid=centroid.tolist(),
            radius=float(radius),
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
