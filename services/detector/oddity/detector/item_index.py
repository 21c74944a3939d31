"""The similarity index a version serves: its items' vectors and, past a size, an HNSW index,
loaded with the version (`ItemIndex.load`) and never changed after: a swap replaces the whole
index with the model. It answers the nearest items to a query (exact or approximate,
filtered) and to a text (against tag and caption vectors), and holds the catalog's parts:
the items' attributes and filters (item_attributes.py), clusters and tag suggestions
(index_analytics.py). Free of protobuf past loading.

Search: exact (one matrix-vector product; measured faster than FAISS's IndexFlatIP on 10,000 x
768: 0.8 against 1.2 ms a query) without an HNSW file, HNSW otherwise. Filters make a mask of
the passing items: few pass -> exact over them; many -> HNSW restricted to them with a wider
breadth, and exact when HNSW finds fewer than asked.

Reason to change: how the index is loaded, held in memory and searched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import faiss
import numpy as np

from oddity.common.bundle import index_contract as contract
from oddity.common.bundle.errors import BundleError
from oddity.common.errors import InvalidArgument
from oddity.detector.index_analytics import Clusters, TagSuggester
from oddity.detector.item_attributes import ItemAttributes
from oddity.v1 import manifest_pb2

# Filtered searches: when fewer items than this share (or this count) pass, they are searched
# exactly; HNSW restricted to a small subset wanders through items it may not return.
EXACT_SHARE = 0.1
EXACT_ITEMS = 2000
# HNSW breadth of a filtered search (at least): filtered-out items still cost a visit.
FILTERED_EF_SEARCH = 256
# Text queries: tags at least this similar to the text are reported as matched, best first.
MATCHED_TAG_FLOOR = 0.5
MATCHED_TAGS = 10
# Text queries: items within this of the best text similarity define the typical match.
TYPICAL_MARGIN = 0.02


class IndexLoadError(Exception):
    """A version's index files cannot be served (unreadable or contradicting the manifest)."""


@dataclass(frozen=True, slots=True)
class Ranked:
    """Catalog positions, most similar first, with their similarities."""

    positions: np.ndarray  # int64
    similarities: np.ndarray  # float32
    approximate: bool = False


@dataclass(frozen=True, slots=True)
class SimilarItem:
    id: str
    similarity: float
    metadata: dict[str, str]
    tags: list[str]
    cluster: int
    text: str  # its caption, else a text dataset's text (cut short); "" for neither


@dataclass(frozen=True, slots=True)
class TagMatch:
    tag: str
    similarity: float


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    id: int
    size: int
    representatives: list[SimilarItem]  # similarity: to the cluster's centroid
    top_tags: list[str]


class ItemIndex:
    """A version's similarity index (see module docstring). Build it with `load`."""

    def __init__(
        self,
        index: manifest_pb2.SimilarityIndex,
        vectors: np.ndarray,
        catalog: manifest_pb2.ItemCatalog,
        hnsw: faiss.Index | None,
        text_vectors: np.ndarray | None,
    ) -> None:
        self.space = index.space
        self.items = int(index.items)
        self.dimension = int(index.dimension)
        self.text_model = manifest_pb2.EmbeddingSource()
        self.text_model.CopyFrom(index.text_model)
        self._center, self._scale = contract.index_normalization(index)
        self._vectors = vectors
        self._hnsw = hnsw
        self._ef_search = max(int(index.hnsw.ef_search), 1)
        self.ids = list(catalog.ids)
        self._positions = {item_id: i for i, item_id in enumerate(self.ids)}
        self.attributes = ItemAttributes(catalog, self.items)
        self.clusters = Clusters(catalog, self.items, self.dimension)
        self.tags = TagSuggester(catalog, self.attributes)
        # Shown with each item: its caption, else its text (an index from before texts were kept
        # has none: "").
        self._caption_of = list(catalog.captions)
        self._text_of = list(catalog.texts)
        # Text search: the tags' vectors, then one per caption (a zero row: no caption).
        self._text = text_vectors
        self._captions = len(catalog.captions)
        n_tags = len(self.attributes.tag_names)
        self._has_caption = (
            np.any(text_vectors[n_tags:] != 0, axis=1) if text_vectors is not None else np.zeros(0, dtype=bool)
        )

    # -- loading --------------------------------------------------------------------------

    @classmethod
    def load(cls, index: manifest_pb2.SimilarityIndex, files: Mapping[str, bytes]) -> ItemIndex:
        """The index of a verified version from its files; raises IndexLoadError."""
        try:
            return cls._load(index, files)
        except BundleError as exc:
            raise IndexLoadError(str(exc)) from None

    @classmethod
    def _load(cls, index: manifest_pb2.SimilarityIndex, files: Mapping[str, bytes]) -> ItemIndex:
        items, dimension = int(index.items), int(index.dimension)
        vectors = contract.read_npy(files[index.vectors.file], what=contract.VECTORS_FILE)
        if vectors.shape != (items, dimension):
            raise IndexLoadError(
                f"{contract.VECTORS_FILE} has shape {list(vectors.shape)}; the manifest says [{items}, {dimension}]"
            )
        if not np.isfinite(vectors).all():
            raise IndexLoadError(f"{contract.VECTORS_FILE} holds NaN or Inf")
        catalog = contract.read_catalog(files[index.catalog.file])
        contract.validate_catalog(catalog, items, dimension)
        hnsw = _read_hnsw(files[index.approximate.file], items, dimension) if index.approximate.file else None
        text_vectors = None
        if index.text_vectors.file:
            text_vectors = contract.read_npy(files[index.text_vectors.file], what=contract.TEXT_VECTORS_FILE)
            rows = len(catalog.tag_names) + len(catalog.captions)
            width = int(index.text_model.dimension) or (text_vectors.shape[1] if text_vectors.ndim == 2 else -1)
            if text_vectors.shape != (rows, width):
                raise IndexLoadError(
                    f"{contract.TEXT_VECTORS_FILE} has shape {list(text_vectors.shape)}; expected [{rows}, {width}] "
                    "(tags, then captions)"
                )
        return cls(index, np.ascontiguousarray(vectors), catalog, hnsw, text_vectors)

    # -- items ----------------------------------------------------------------------------

    @property
    def approximate(self) -> bool:
        """The version has an HNSW index."""
        return self._hnsw is not None

    @property
    def has_text_vectors(self) -> bool:
        return self._text is not None

    def position(self, item_id: str) -> int | None:
        return self._positions.get(item_id)

    def vector(self, position: int) -> np.ndarray:
        """The item's normalized vector [dimension]."""
        return self._vectors[position]

    def normalize(self, vectors: np.ndarray) -> np.ndarray:
        """Raw vectors [n, dimension] into the index's space."""
        return contract.normalize(vectors, self._center, self._scale)

    def describe(self, ranked: Ranked) -> list[SimilarItem]:
        return [
            SimilarItem(
                id=self.ids[position],
                similarity=similarity,
                metadata=self.attributes.metadata(position),
                tags=self.attributes.tag_list(position),
                cluster=self.clusters.of(position),
                text=self.text(position),
            )
            for position, similarity in zip(ranked.positions.tolist(), ranked.similarities.tolist(), strict=True)
        ]

    def text(self, position: int) -> str:
        """The item's caption, else its text, as answered (cut to contract.SHOWN_TEXT)."""
        caption = self._caption_of[position] if self._caption_of else ""
        return contract.shown_text(caption or (self._text_of[position] if self._text_of else ""))

    def cluster_infos(self, representatives: int) -> list[ClusterInfo]:
        """Every cluster, largest first, with its first `representatives` representatives."""
        return [
            ClusterInfo(
                int(c.cluster.id),
                int(c.cluster.size),
                self.describe(Ranked(c.positions, c.similarities)),
                list(c.cluster.top_tags),
            )
            for c in self.clusters.represented(representatives, self._vectors)
        ]

    # -- search ---------------------------------------------------------------------------

    def search(
        self, query: np.ndarray, k: int, *, mask: np.ndarray | None = None, exclude: int | None = None
    ) -> Ranked:
        """The k items most similar to a normalized query [dimension] among those `mask` lets
        through (all without one), leaving out position `exclude`."""
        passing = self.items if mask is None else int(np.count_nonzero(mask))
        if exclude is not None and (mask is None or mask[exclude]):
            passing -= 1
        wanted = min(k, passing)
        if wanted <= 0:
            return Ranked(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
        if self._hnsw is not None:
            if mask is None:
                found = self._search_hnsw(query, wanted + (exclude is not None), max(self._ef_search, 4 * k), None)
            elif passing >= EXACT_SHARE * self.items and passing >= EXACT_ITEMS:
                ef = max(self._ef_search, 4 * k, FILTERED_EF_SEARCH)
                found = self._search_hnsw(query, wanted + (exclude is not None), ef, mask)
            else:
                found = None
            if found is not None:
                positions, similarities = found.positions, found.similarities
                if exclude is not None:
                    kept = positions != exclude
                    positions, similarities = positions[kept], similarities[kept]
                if len(positions) >= wanted:
                    return Ranked(positions[:wanted], similarities[:wanted], approximate=True)
        if mask is not None and passing < self.items // 2:
            # Few items pass: score only them.
            candidates = np.flatnonzero(mask)
            skip = int(np.searchsorted(candidates, exclude)) if exclude is not None and mask[exclude] else None
            ranked = _top(self._vectors[candidates] @ query, wanted, None, skip)
            return Ranked(candidates[ranked.positions], ranked.similarities)
        return _top(self._vectors @ query, wanted, mask, exclude)

    def _search_hnsw(self, query: np.ndarray, k: int, ef: int, mask: np.ndarray | None) -> Ranked:
        assert self._hnsw is not None
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # (missing from faiss's stubs)
        params.efSearch = ef
        bitmap = selector = None
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")  # kept alive until the search returns
            selector = faiss.IDSelectorBitmap(self.items, faiss.swig_ptr(bitmap))
            params.sel = selector
        similarities, labels = self._hnsw.search(query.reshape(1, -1), k, params=params)
        found = labels[0] >= 0
        del bitmap, selector
        return Ranked(labels[0][found].astype(np.int64), similarities[0][found], approximate=True)

    def text_search(
        self, query: np.ndarray, k: int, *, mask: np.ndarray | None = None, exclude: int | None = None
    ) -> tuple[Ranked, list[TagMatch]]:
        """Items by the similarity of a normalized text-model vector to their best tag or their
        caption (exact), and the tags it matched, best first."""
        if self._text is None:
            raise InvalidArgument("the index has no text vectors")
        tag_names = self.attributes.tag_names
        n_tags = len(tag_names)
        tag_similarity = self._text[:n_tags] @ query
        scores = np.full(self.items, -np.inf, dtype=np.float32)
        if len(self.attributes.tag_ids):
            np.maximum.at(scores, self.attributes.tag_items, tag_similarity[self.attributes.tag_ids])
        if self._captions:
            caption_similarity = np.where(self._has_caption, self._text[n_tags:] @ query, -np.inf)
            scores = np.maximum(scores, caption_similarity.astype(np.float32))
        order = np.argsort(-tag_similarity, kind="stable")[:MATCHED_TAGS]
        matched = [
            TagMatch(tag_names[t], float(tag_similarity[t]))
            for t in order.tolist()
            if tag_similarity[t] >= MATCHED_TAG_FLOOR
        ]
        return _top(scores, k, mask, exclude, self._typicality(scores)), matched

    def _typicality(self, scores: np.ndarray) -> np.ndarray | None:
        """Items sharing a tag tie on text similarity: the most typical of the best-matching
        items (closest to their mean vector) come first."""
        finite = np.isfinite(scores)
        if not finite.any():
            return None
        best = self._vectors[scores >= scores[finite].max() - TYPICAL_MARGIN]
        centre = best.mean(axis=0)
        return self._vectors @ (centre / max(float(np.linalg.norm(centre)), 1e-12))


def _top(
    scores: np.ndarray, k: int, mask: np.ndarray | None, exclude: int | None, tie_break: np.ndarray | None = None
) -> Ranked:
    """The k best finite scores among the positions `mask` lets through, best first (ties by
    the higher `tie_break`, then by position), leaving out `exclude`."""
    scores = np.array(scores, dtype=np.float32)
    if mask is not None:
        scores[~mask] = -np.inf
    if exclude is not None:
        scores[exclude] = -np.inf
    k = min(k, len(scores))
    if k <= 0:
        return Ranked(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
    if tie_break is not None:  # every tied item must be a candidate, not the first k by position
        top = np.flatnonzero(scores >= np.partition(scores, len(scores) - k)[len(scores) - k])
        top = top[np.lexsort((top, -tie_break[top], -scores[top]))][:k]
    else:
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.lexsort((top, -scores[top]))]
    top = top[np.isfinite(scores[top])]
    return Ranked(top.astype(np.int64), scores[top])


def _read_hnsw(data: bytes, items: int, dimension: int) -> faiss.Index:
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IndexLoadError(f"{contract.APPROXIMATE_FILE} is not a FAISS index: {first_line}") from None
    if not isinstance(index, faiss.IndexHNSW) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexLoadError(f"{contract.APPROXIMATE_FILE} is not an HNSW index over inner products")
    if index.ntotal != items or index.d != dimension:
        raise IndexLoadError(
            f"{contract.APPROXIMATE_FILE} holds {index.ntotal} vectors of {index.d}; the manifest says "
            f"{items} of {dimension}"
        )
    return index
