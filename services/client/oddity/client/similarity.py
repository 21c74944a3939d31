"""Similarity as SDK callers see it: what to look for (`Query`), which items to keep
(`Filter`), and what Similar, Clusters and SuggestTags answer, as plain Python objects.

    detector.similar("library", item_id="img-17", top_k=5, exclude_self=True,
                     filters={"subject": ["face", "car"], "age": (3, 6)})

Filters combine with AND. As a mapping, a column's value says which filter it is:
    "face"              text equality            Filter.equals("subject", "face")
    ["face", "car"]     any one of these texts   Filter.equals("subject", "face", "car")
    7 (a number)        exactly this number      Filter.between("age", 7, 7)
    (3, 6)              within [3, 6]; None      Filter.between("age", 3, 6)
                        leaves an end open
Numbers compare as numbers on numeric columns; texts compare as texts.

Reason to change: the similarity messages of the Detector API, or how they are shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oddity.common.tensors import array_to_tensor
from oddity.v1 import detector_pb2

NO_CLUSTER = -1  # the wire's "in no cluster"

VectorLike = np.ndarray | Sequence[float]
ImageLike = bytes | Path | str  # encoded bytes, or a path to an image file


@dataclass(frozen=True, eq=False)
class Query:
    """One item to look for: an indexed item's id, a vector, an image or a text."""

    item_id: str | None = None
    vector: np.ndarray | None = None
    image: bytes | None = None
    text: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("item_id", "vector", "image", "text") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of item_id, vector, image, text (got {', '.join(given) or 'none'})")

    @classmethod
    def of(
        cls,
        *,
        item_id: str | None = None,
        vector: VectorLike | None = None,
        image: ImageLike | None = None,
        text: str | None = None,
    ) -> Query:
        """A query from whichever one is given (an image path is read here)."""
        return cls(
            item_id=item_id,
            vector=None if vector is None else _vector(vector),
            image=None if image is None else _image_bytes(image),
            text=text,
        )

    @classmethod
    def by_id(cls, item_id: str) -> Query:
        return cls(item_id=item_id)

    @classmethod
    def by_vector(cls, vector: VectorLike) -> Query:
        return cls(vector=_vector(vector))

    @classmethod
    def by_image(cls, image: ImageLike) -> Query:
        return cls(image=_image_bytes(image))

    @classmethod
    def by_text(cls, text: str) -> Query:
        return cls(text=text)

    @classmethod
    def coerce(cls, value: Query | bytes | Path | np.ndarray) -> Query:
        """A Query as is; bytes or a Path as an image; an array as a vector. A str could be an
        item id or a text, so it is refused: say which with Query.by_id or Query.by_text."""
        if isinstance(value, Query):
            return value
        if isinstance(value, bytes | Path):
            return cls.by_image(value)
        if isinstance(value, np.ndarray):
            return cls.by_vector(value)
        if isinstance(value, str):
            raise TypeError(f"{value!r}: an item id or a text? give Query.by_id(...) or Query.by_text(...)")
        raise TypeError(f"cannot query with a {type(value).__name__}: give a Query, image bytes, a Path or an array")

    def to_proto(self) -> detector_pb2.ItemQuery:
        if self.item_id is not None:
            return detector_pb2.ItemQuery(item_id=self.item_id)
        if self.vector is not None:
            return detector_pb2.ItemQuery(vector=array_to_tensor(self.vector))
        if self.image is not None:
            return detector_pb2.ItemQuery(image=self.image)
        return detector_pb2.ItemQuery(text=self.text or "")


def _vector(value: VectorLike) -> np.ndarray:
    vector = np.asarray(value, dtype=np.float32)
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"a query vector is one row of numbers; got shape {list(vector.shape)}")
    return vector


def _image_bytes(value: ImageLike) -> bytes:
    return value if isinstance(value, bytes) else Path(value).read_bytes()


@dataclass(frozen=True)
class Filter:
    """Keep items whose metadata `column` is one of `any_of` (texts) and/or within [min, max]."""

    column: str
    any_of: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if not self.column:
            raise ValueError("a filter names its column")
        if not self.any_of and self.min is None and self.max is None:
            raise ValueError(f"filter on {self.column!r} keeps everything: give values or a bound")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"filter on {self.column!r}: {self.min:g} > {self.max:g} keeps nothing")

    @classmethod
    def equals(cls, column: str, *values: str | float) -> Filter:
        """Items whose `column` is one of `values` (compared as texts)."""
        if not values:
            raise ValueError(f"filter on {column!r}: give at least one value")
        return cls(column, any_of=tuple(_text(v) for v in values))

    @classmethod
    def between(cls, column: str, low: float | None = None, high: float | None = None) -> Filter:
        """Items whose numeric `column` is within [low, high] (None: that end is open)."""
        return cls(column, min=None if low is None else float(low), max=None if high is None else float(high))

    @classmethod
    def at_least(cls, column: str, low: float) -> Filter:
        return cls.between(column, low, None)

    @classmethod
    def at_most(cls, column: str, high: float) -> Filter:
        return cls.between(column, None, high)

    def to_proto(self) -> detector_pb2.MetadataFilter:
        message = detector_pb2.MetadataFilter(column=self.column, any_of=list(self.any_of))
        if self.min is not None:
            message.min = self.min
        if self.max is not None:
            message.max = self.max
        return message


Filters = Mapping[str, Any] | Iterable[Filter] | None


def _text(value: object) -> str:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a metadata value")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _mapped_filter(column: str, value: object) -> Filter:
    if isinstance(value, Filter):
        return value
    if isinstance(value, str):
        return Filter.equals(column, value)
    if isinstance(value, bool):
        raise ValueError(f"filter on {column!r}: {value!r} is not a metadata value")
    if isinstance(value, int | float | np.number):
        return Filter.between(column, float(value), float(value))
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"filter on {column!r}: a range is (low, high); got {value!r}")
        return Filter.between(column, *value)
    if isinstance(value, list | set | frozenset):
        return Filter.equals(column, *sorted(value, key=str) if isinstance(value, set | frozenset) else value)
    raise ValueError(f"filter on {column!r}: cannot filter by a {type(value).__name__}")


def filter_list(filters: Filters) -> list[Filter]:
    """Filters from a mapping (see the module docstring) or an iterable of Filter."""
    if filters is None:
        return []
    if isinstance(filters, Mapping):
        return [_mapped_filter(str(column), value) for column, value in filters.items()]
    found = list(filters)
    for item in found:
        if not isinstance(item, Filter):
            raise ValueError(f"filters are Filter objects or a mapping of column to value; got {item!r}")
    return found


def _cluster(value: int) -> int | None:
    return None if value == NO_CLUSTER else value


@dataclass(frozen=True)
class SimilarItem:
    """An indexed item and how similar it is to the query."""

    id: str
    similarity: float  # cosine in the index's space (text queries: of the best tag or caption)
    metadata: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    cluster: int | None = None  # None: in no cluster

    @classmethod
    def from_proto(cls, item: detector_pb2.SimilarItem) -> SimilarItem:
        return cls(
            id=item.id,
            similarity=item.similarity,
            metadata=dict(sorted(item.metadata.items())),  # a map has no order on the wire
            tags=tuple(item.tags),
            cluster=_cluster(item.cluster),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tags": list(self.tags)}


@dataclass(frozen=True)
class TagMatch:
    """A tag a text query matched, and how closely."""

    tag: str
    similarity: float


@dataclass(frozen=True)
class SimilarResult:
    """What Similar answers: items, most similar first, and the version whose index answered."""

    model: str
    version: int
    items: list[SimilarItem]
    approximate: bool  # the approximate (HNSW) index answered, else exact search
    matched_tags: list[TagMatch]  # text queries matched against tags: best first

    @classmethod
    def from_proto(cls, response: detector_pb2.SimilarResponse) -> SimilarResult:
        return cls(
            model=response.model,
            version=response.version,
            items=[SimilarItem.from_proto(i) for i in response.items],
            approximate=response.approximate,
            matched_tags=[TagMatch(m.tag, m.similarity) for m in response.matched_tags],
        )

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SimilarItem]:
        return iter(self.items)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]

    def metadata_columns(self) -> list[str]:
        """Every metadata column of the items, by name."""
        return sorted({column for item in self.items for column in item.metadata})

    def to_frame(self) -> pd.DataFrame:
        """One row per item: id, similarity, cluster (None: none), tags, then each metadata column
        (prefixed `metadata_` when it has the name of one of those)."""
        fixed = ("id", "similarity", "cluster", "tags")
        frame = pd.DataFrame(
            {
                "id": self.ids,
                "similarity": [item.similarity for item in self.items],
                "cluster": pd.array([item.cluster for item in self.items], dtype="Int64"),
                "tags": [list(item.tags) for item in self.items],
            }
        )
        for column in self.metadata_columns():
            name = f"metadata_{column}" if column in fixed else column
            frame[name] = [item.metadata.get(column) for item in self.items]
        return frame

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "approximate": self.approximate,
            "items": [{"rank": rank, **item.to_dict()} for rank, item in enumerate(self.items, 1)],
            "matched_tags": [asdict(m) for m in self.matched_tags],
        }


@dataclass(frozen=True)
class ClusterInfo:
    """One cluster of the indexed items: its size, its most central members (the medoid
    first) and its most frequent tags."""

    id: int
    size: int
    representatives: list[SimilarItem]
    top_tags: tuple[str, ...]

    @classmethod
    def from_proto(cls, cluster: detector_pb2.ClusterInfo) -> ClusterInfo:
        return cls(
            id=cluster.id,
            size=cluster.size,
            representatives=[SimilarItem.from_proto(i) for i in cluster.representatives],
            top_tags=tuple(cluster.top_tags),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "size": self.size,
            "representatives": [item.to_dict() for item in self.representatives],
            "top_tags": list(self.top_tags),
        }


@dataclass(frozen=True)
class ClusterAssignment:
    """Where a new item goes: the nearest cluster, or none (`is_new`) when none is close enough."""

    cluster: int | None
    is_new: bool
    similarity: float  # cosine to the nearest cluster's centroid

    @classmethod
    def from_proto(cls, assignment: detector_pb2.ClusterAssignment) -> ClusterAssignment:
        return cls(_cluster(assignment.cluster), assignment.is_new, assignment.similarity)


@dataclass(frozen=True)
class ClustersResult:
    """What Clusters answers: the clusters, largest first, and one assignment per item given."""

    model: str
    version: int
    clusters: list[ClusterInfo]
    unclustered: int  # items in no cluster
    assignments: list[ClusterAssignment]

    @classmethod
    def from_proto(cls, response: detector_pb2.ClustersResponse) -> ClustersResult:
        return cls(
            model=response.model,
            version=response.version,
            clusters=[ClusterInfo.from_proto(c) for c in response.clusters],
            unclustered=response.unclustered,
            assignments=[ClusterAssignment.from_proto(a) for a in response.assignments],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "clusters": [c.to_dict() for c in self.clusters],
            "unclustered": self.unclustered,
            "assignments": [asdict(a) for a in self.assignments],
        }


@dataclass(frozen=True)
class TagSuggestion:
    """A tag suggested for an item, with the two parts of its score."""

    tag: str
    score: float  # in [0, 1]: from the neighbours' tags and from co-occurrence with the item's tags
    from_neighbours: float  # similarity-weighted share of the neighbours carrying the tag
    from_cooccurrence: float  # lift-based support from the tags the item has (0 without any)


@dataclass(frozen=True)
class TagSuggestions:
    """What SuggestTags answers: suggestions, best first, and the version that made them."""

    model: str
    version: int
    suggestions: list[TagSuggestion]

    @classmethod
    def from_proto(cls, response: detector_pb2.SuggestTagsResponse) -> TagSuggestions:
        return cls(
            model=response.model,
            version=response.version,
            suggestions=[
                TagSuggestion(s.tag, s.score, s.from_neighbours, s.from_cooccurrence) for s in response.suggestions
            ],
        )

    def __len__(self) -> int:
        return len(self.suggestions)

    def __iter__(self) -> Iterator[TagSuggestion]:
        return iter(self.suggestions)

    @property
    def tags(self) -> list[str]:
        return [s.tag for s in self.suggestions]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "suggestions": [asdict(s) for s in self.suggestions]}
