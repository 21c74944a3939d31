"""The detector's similarity use cases, free of protobuf: items like a query (Similar), the
clusters and the assignment of new items to them (Clusters), tag suggestions (SuggestTags).

Each request leases the serving version once and keeps the lease to the end, embedding
included: its answer comes from one version's index, whatever swaps meanwhile. A query is
resolved to a vector of the index's space: an item id to its stored vector, a vector checked
and normalized, an image or a text embedded through the embedder with the model the manifest
names (and the embedder checked to serve those weights, as DetectImages does). A text for an
index of image embeddings is instead embedded with the index's text model and matched against
its tag and caption vectors.

Reason to change: what the similarity RPCs offer and how their requests are checked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

import numpy as np

from oddity.common.bundle import index_contract as contract
from oddity.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable, shown
from oddity.common.logging import annotate_request
from oddity.detector.embedder_calls import EmbedderSource, embed_for
from oddity.detector.index_analytics import ClusterAssignment, TagSuggestion
from oddity.detector.item_attributes import MetadataFilter
from oddity.detector.item_index import ClusterInfo, ItemIndex, Ranked, SimilarItem, TagMatch
from oddity.detector.metrics import DetectorMetrics
from oddity.detector.model import LoadedModel
from oddity.detector.registry import ModelRegistry
from oddity.v1 import manifest_pb2

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_TOP_K = 10
DEFAULT_REPRESENTATIVES = 5
DEFAULT_SUGGESTIONS = 5
DEFAULT_NEIGHBOURS = 10
# Searches over at most this many stored values (items x dimension) run on the event loop: a
# thread hop would cost more than the search (about 0.3 ms at this size).
INLINE_VALUES = 1 << 20


@dataclass(frozen=True, slots=True)
class ItemQuery:
    """One of: an indexed item's id, a vector [dimension] or [1, dimension] (before
    normalization), an encoded image, a text."""

    item_id: str | None = None
    vector: np.ndarray | None = None
    image: bytes | None = None
    text: str | None = None


@dataclass(slots=True)
class SimilarInput:
    model: str
    query: ItemQuery
    version: int = 0
    top_k: int = 0
    filters: Sequence[MetadataFilter] = ()
    exclude_self: bool = False
    with_tags: Sequence[str] = ()


@dataclass(slots=True)
class SimilarOutput:
    model: str
    version: int
    items: list[SimilarItem]
    approximate: bool
    matched_tags: list[TagMatch] = field(default_factory=list)


@dataclass(slots=True)
class ClustersInput:
    model: str
    version: int = 0
    representatives: int = 0
    assign: Sequence[ItemQuery] = ()


@dataclass(slots=True)
class ClustersOutput:
    model: str
    version: int
    clusters: list[ClusterInfo]
    unclustered: int
    assignments: list[ClusterAssignment]


@dataclass(slots=True)
class SuggestTagsInput:
    model: str
    query: ItemQuery
    version: int = 0
    tags: Sequence[str] = ()
    top_k: int = 0
    neighbours: int = 0


@dataclass(slots=True)
class SuggestTagsOutput:
    model: str
    version: int
    suggestions: list[TagSuggestion]


@dataclass(frozen=True)
class SimilarityLimits:
    # top_k, neighbours and representatives: at most this many (the API's bound; INVALID_ARGUMENT beyond).
    max_results: int = 1000
    # Items one Clusters request may assign (RESOURCE_EXHAUSTED beyond, as for Detect's rows): the
    # embedder's default limit per request, since images and texts go to it in one call.
    max_assign: int = 1024


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A query in the index's terms: a normalized vector of the index's space, or (a text for
    an index of other embeddings) a normalized vector of the index's text model."""

    vector: np.ndarray | None = None
    text_vector: np.ndarray | None = None
    position: int | None = None  # item_id queries


class SimilarityService:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: DetectorMetrics,
        *,
        limits: SimilarityLimits = SimilarityLimits(),
        embedder: EmbedderSource | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.limits = limits
        self._embedder = embedder

    async def similar(self, request: SimilarInput) -> SimilarOutput:
        start = time.perf_counter()
        k = self._count("top_k", request.top_k, DEFAULT_TOP_K)
        with self._lease(request.model, request.version) as (model, index):
            mask = index.attributes.mask(request.filters, request.with_tags)
            query = (await self._resolve(model, index, [request.query]))[0]
            exclude = query.position if request.exclude_self else None
            ranked, matched = await _nearest(index, query, k, mask=mask, exclude=exclude)
            output = SimilarOutput(model.name, model.version, index.describe(ranked), ranked.approximate, matched)
        self.metrics.observe_similarity(model.name, "Similar", ranked.approximate, time.perf_counter() - start)
        return output

    async def clusters(self, request: ClustersInput) -> ClustersOutput:
        start = time.perf_counter()
        representatives = self._count("representatives", request.representatives, DEFAULT_REPRESENTATIVES)
        if len(request.assign) > self.limits.max_assign:
            raise ResourceExhausted(
                f"the request assigns {len(request.assign)} items; the limit is {self.limits.max_assign}"
            )
        with self._lease(request.model, request.version) as (model, index):
            assignments: list[ClusterAssignment] = []
            if request.assign:
                resolved = await self._resolve(model, index, request.assign, what="assign", text_vectors=False)
                vectors = np.stack([r.vector for r in resolved if r.vector is not None])
                assignments = index.clusters.assign(vectors)
            output = ClustersOutput(
                model.name, model.version, index.cluster_infos(representatives), index.clusters.unclustered, assignments
            )
        self.metrics.observe_similarity(model.name, "Clusters", False, time.perf_counter() - start)
        return output

    async def suggest_tags(self, request: SuggestTagsInput) -> SuggestTagsOutput:
        start = time.perf_counter()
        top_k = self._count("top_k", request.top_k, DEFAULT_SUGGESTIONS)
        neighbours = self._count("neighbours", request.neighbours, DEFAULT_NEIGHBOURS)
        with self._lease(request.model, request.version) as (model, index):
            query = (await self._resolve(model, index, [request.query]))[0]
            present = index.attributes.tag_indices(request.tags)
            if query.position is not None:  # an indexed item's own tags count as present
                present = list(dict.fromkeys([*present, *index.attributes.item_tags(query.position).tolist()]))
            ranked, _ = await _nearest(index, query, neighbours, exclude=query.position)
            suggestions = index.tags.suggest(ranked.positions, ranked.similarities, present, top_k)
            output = SuggestTagsOutput(model.name, model.version, suggestions)
        self.metrics.observe_similarity(model.name, "SuggestTags", ranked.approximate, time.perf_counter() - start)
        return output

    # -- checks ---------------------------------------------------------------------------

    def _count(self, what: str, value: int, default: int) -> int:
        if value < 0:
            raise InvalidArgument(f"{what} must be >= 0 (0: {default}), got {value}")
        if value > self.limits.max_results:
            raise InvalidArgument(f"{what} is {value}; at most {self.limits.max_results}")
        return value or default

    @contextmanager
    def _lease(self, name: str, version: int) -> Iterator[tuple[LoadedModel, ItemIndex]]:
        """The serving version and its index, leased for the whole request."""
        with self.registry.lease(name) as model:
            annotate_request(model=model.name, version=model.version)
            if version and version != model.version:
                raise NotFound(f"version {version} of model {name!r} is not serving (serving {model.version})")
            if model.similarity is None:
                raise FailedPrecondition(
                    f"version {model.version} of model {name!r} has no similarity index; train a version with an "
                    "index of the dataset's items to search it"
                )
            yield model, model.similarity

    # -- queries --------------------------------------------------------------------------

    async def _resolve(
        self,
        model: LoadedModel,
        index: ItemIndex,
        queries: Sequence[ItemQuery],
        *,
        what: str = "query",
        text_vectors: bool = True,
    ) -> list[_Resolved]:
        """Each query in the index's terms. Images are embedded in one embedder call, texts in
        another. `text_vectors`: a text may be matched against tag and caption vectors (else it
        must embed into the index's own space)."""
        resolved: list[_Resolved | None] = [None] * len(queries)
        images: list[tuple[int, bytes]] = []
        texts: list[tuple[int, str]] = []
        for i, query in enumerate(queries):
            where = f"{what}[{i}]" if len(queries) > 1 or what != "query" else what
            if query.item_id is not None:
                position = index.position(query.item_id)
                if position is None:
                    raise NotFound(
                        f"{where}: item {shown(query.item_id)!r} is not in the index of model {model.name!r} "
                        f"v{model.version}"
                    )
                resolved[i] = _Resolved(vector=index.vector(position), position=position)
            elif query.vector is not None:
                resolved[i] = _Resolved(vector=self._checked_vector(model, index, query.vector, where))
            elif query.image is not None:
                images.append((i, query.image))
            elif query.text is not None:
                texts.append((i, query.text))
            else:
                raise InvalidArgument(f"{where} is empty: set item_id, vector, image or text")
        if images:
            source = self._embedding_source(model, index, "image")
            vectors = await self._embed(model, source, images=[image for _, image in images])
            for (i, _), vector in zip(images, index.normalize(vectors), strict=True):
                resolved[i] = _Resolved(vector=vector)
        if texts:
            for i, vector, in_index_space in await self._embed_texts(model, index, texts, what, text_vectors):
                resolved[i] = _Resolved(vector=vector) if in_index_space else _Resolved(text_vector=vector)
        return [r for r in resolved if r is not None]

    @staticmethod
    def _checked_vector(model: LoadedModel, index: ItemIndex, vector: np.ndarray, where: str) -> np.ndarray:
        if vector.shape[0] != 1:
            raise InvalidArgument(
                f"{where}.vector must be one vector, [{index.dimension}] or [1, {index.dimension}]; "
                f"got shape {list(vector.shape)}"
            )
        if vector.shape[1] != index.dimension:
            raise InvalidArgument(
                f"{where}.vector has {vector.shape[1]} values; the index of model {model.name!r} v{model.version} "
                f"holds vectors of {index.dimension}"
            )
        if not np.isfinite(vector).all():
            raise InvalidArgument(f"{where}.vector holds NaN or Inf")
        return index.normalize(vector)[0]

    @staticmethod
    def _embedding_source(model: LoadedModel, index: ItemIndex, modality: str) -> manifest_pb2.EmbeddingSource:
        """The embedder model whose vectors the index holds, when they are of `modality`."""
        manifest = model.manifest
        if index.space != contract.EMBEDDING_SPACE or not manifest.HasField("embedding"):
            raise InvalidArgument(
                f"model {model.name!r} indexes table rows, not {modality}s; query it by item_id or vector"
            )
        source = manifest.embedding
        if source.modality != modality:
            raise InvalidArgument(f"model {model.name!r} indexes {source.modality}s, not {modality}s")
        return source

    async def _embed_texts(
        self, model: LoadedModel, index: ItemIndex, texts: list[tuple[int, str]], what: str, text_vectors: bool
    ) -> list[tuple[int, np.ndarray, bool]]:
        """(query position, normalized vector, whether it is of the index's own space) per text."""
        manifest = model.manifest
        strings = [text for _, text in texts]
        own = manifest.embedding if manifest.HasField("embedding") else None
        if index.space == contract.EMBEDDING_SPACE and own is not None and own.modality == "text":
            vectors = index.normalize(await self._embed(model, own, texts=strings))
            return [(i, v, True) for (i, _), v in zip(texts, vectors, strict=True)]
        if not index.has_text_vectors:
            raise FailedPrecondition(
                f"version {model.version} of model {model.name!r} cannot search by text: its index holds no text "
                "embeddings and no tag or caption vectors of a text model"
            )
        if not text_vectors:
            raise InvalidArgument(
                f"{what}: texts can only be assigned to clusters of a text-embedding index; model {model.name!r} "
                "matches texts against its tags and captions (use Similar)"
            )
        vectors = contract.normalize(await self._embed(model, index.text_model, texts=strings))
        return [(i, v, False) for (i, _), v in zip(texts, vectors, strict=True)]

    async def _embed(
        self,
        model: LoadedModel,
        source: manifest_pb2.EmbeddingSource,
        *,
        images: Sequence[bytes] = (),
        texts: Sequence[str] = (),
    ) -> np.ndarray:
        """Vectors [n, dimension] from the embedder, refused unless it serves the weights that
        made the index (as DetectImages refuses them)."""
        if self._embedder is None:
            raise Unavailable("no embedder is configured on this detector (--embedder)")
        made = f"model {model.name!r} v{model.version} was indexed with"
        return (await embed_for(self._embedder(), source, made, images=images, texts=texts)).vectors


async def _nearest(
    index: ItemIndex, query: _Resolved, k: int, *, mask: np.ndarray | None = None, exclude: int | None = None
) -> tuple[Ranked, list[TagMatch]]:
    """The k items nearest a resolved query: a text-model vector against the tags and captions
    (with the tags it matched), else the index's own vector search (no tags matched)."""
    if query.text_vector is not None:
        return await _run(index, index.text_search, query.text_vector, k, mask=mask, exclude=exclude)
    assert query.vector is not None
    return await _run(index, index.search, query.vector, k, mask=mask, exclude=exclude), []


async def _run(index: ItemIndex, search: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A search on the event loop when the index is small, else on a worker thread."""
    if index.items * index.dimension <= INLINE_VALUES:
        return search(*args, **kwargs)
    return await asyncio.to_thread(search, *args, **kwargs)
