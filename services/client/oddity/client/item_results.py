"""What Similar, Clusters and SuggestTags answer, as plain Python objects: similar items,
clusters with their representatives and assignments, suggested tags; as frames and JSON.

Reason to change: the answers of the Detector API's item messages, or how they are shown.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from oddity.client.messages import from_message
from oddity.v1 import detector_pb2

NO_CLUSTER = -1  # the wire's "in no cluster"


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
    text: str = ""  # its caption, or its text for a text dataset (first 200 characters); "" for neither

    @classmethod
    def from_proto(cls, item: detector_pb2.SimilarItem) -> SimilarItem:
        return from_message(cls, item, cluster=_cluster(item.cluster))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"tags": list(self.tags)}


@dataclass(frozen=True)
class TagMatch:
    """A tag a text query matched, and how closely."""

    tag: str
    similarity: float

    @classmethod
    def from_proto(cls, match: detector_pb2.TagMatch) -> TagMatch:
        return from_message(cls, match)


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
        return from_message(
            cls,
            response,
            items=[SimilarItem.from_proto(i) for i in response.items],
            matched_tags=[TagMatch.from_proto(m) for m in response.matched_tags],
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

    @property
    def has_texts(self) -> bool:
        """Whether any item has a caption or text to show."""
        return any(item.text for item in self.items)

    def to_frame(self) -> pd.DataFrame:
        """One row per item: id, similarity, cluster (None: none), tags, text (when any item has
        one), then each metadata column (prefixed `metadata_` when it has the name of one of those)."""
        fixed = ("id", "similarity", "cluster", "tags", "text")
        frame = pd.DataFrame(
            {
                "id": self.ids,
                "similarity": [item.similarity for item in self.items],
                "cluster": pd.array([item.cluster for item in self.items], dtype="Int64"),
                "tags": [list(item.tags) for item in self.items],
            }
        )
        if self.has_texts:
            frame["text"] = [item.text for item in self.items]
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
        return from_message(cls, cluster, representatives=[SimilarItem.from_proto(i) for i in cluster.representatives])

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
        return from_message(cls, assignment, cluster=_cluster(assignment.cluster))


@dataclass(frozen=True)
class ClustersResult:
    """What Clusters answers: the clusters, largest first (their number is the count the
    trainer chose), the items in none, and one assignment per item given."""

    model: str
    version: int
    clusters: list[ClusterInfo]
    unclustered: int  # items in no cluster (fewer with a larger similarity.cluster_reach)
    assignments: list[ClusterAssignment]

    @property
    def unclustered_share(self) -> float:
        """The share of the indexed items in no cluster (0 for an index without items)."""
        items = self.unclustered + sum(c.size for c in self.clusters)
        return self.unclustered / items if items else 0.0

    @classmethod
    def from_proto(cls, response: detector_pb2.ClustersResponse) -> ClustersResult:
        return from_message(
            cls,
            response,
            clusters=[ClusterInfo.from_proto(c) for c in response.clusters],
            assignments=[ClusterAssignment.from_proto(a) for a in response.assignments],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "clusters": [c.to_dict() for c in self.clusters],
            "unclustered": self.unclustered,
            "unclustered_share": self.unclustered_share,
            "assignments": [asdict(a) for a in self.assignments],
        }


@dataclass(frozen=True)
class TagSuggestion:
    """A tag suggested for an item, with the two parts of its score."""

    tag: str
    score: float  # in [0, 1]: from the neighbours' tags and from co-occurrence with the item's tags
    from_neighbours: float  # similarity-weighted share of the neighbours carrying the tag
    from_cooccurrence: float  # lift-based support from the tags the item has (0 without any)

    @classmethod
    def from_proto(cls, suggestion: detector_pb2.TagSuggestion) -> TagSuggestion:
        return from_message(cls, suggestion)


@dataclass(frozen=True)
class TagSuggestions:
    """What SuggestTags answers: suggestions, best first, and the version that made them."""

    model: str
    version: int
    suggestions: list[TagSuggestion]

    @classmethod
    def from_proto(cls, response: detector_pb2.SuggestTagsResponse) -> TagSuggestions:
        return from_message(cls, response, suggestions=[TagSuggestion.from_proto(s) for s in response.suggestions])

    def __len__(self) -> int:
        return len(self.suggestions)

    def __iter__(self) -> Iterator[TagSuggestion]:
        return iter(self.suggestions)

    @property
    def tags(self) -> list[str]:
        return [s.tag for s in self.suggestions]

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "suggestions": [asdict(s) for s in self.suggestions]}
