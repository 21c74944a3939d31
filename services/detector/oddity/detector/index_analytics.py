"""What the trainer derived from a version's items and the detector answers from: the clusters
(their representatives, and which cluster a new item joins) and tag suggestions (from an
item's neighbours' tags and the tags' co-occurrence).

Reason to change: how clusters and tag suggestions are answered from the catalog.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from oddity.common.bundle import index_contract as contract
from oddity.detector.item_attributes import ItemAttributes
from oddity.v1 import manifest_pb2

# Co-occurrence support of a tag: log(lift) / log(LIFT_CEILING), clipped to [0, 1] (lift 1,
# independence, gives 0; ten times more often together than by chance gives 1).
LIFT_CEILING = 10.0


@dataclass(frozen=True, slots=True)
class ClusterAssignment:
    cluster: int  # NO_CLUSTER when new
    is_new: bool
    similarity: float  # to the nearest centroid


@dataclass(frozen=True, slots=True)
class RepresentedCluster:
    """A cluster with its first representatives (catalog positions) and their similarity to
    its centroid."""

    cluster: manifest_pb2.ItemCluster
    positions: np.ndarray  # int64
    similarities: np.ndarray  # float32


@dataclass(frozen=True, slots=True)
class TagSuggestion:
    tag: str
    score: float
    from_neighbours: float
    from_cooccurrence: float


class Clusters:
    """The version's clusters, largest first, and each item's cluster."""

    def __init__(self, catalog: manifest_pb2.ItemCatalog, items: int, dimension: int) -> None:
        self._item_clusters = (
            np.asarray(catalog.item_clusters, dtype=np.int64)
            if catalog.item_clusters
            else np.full(items, contract.NO_CLUSTER, dtype=np.int64)
        )
        self._clusters = sorted(catalog.clusters, key=lambda c: (-c.size, c.id))
        self._centroids = (
            np.asarray([list(c.centroid) for c in self._clusters], dtype=np.float32)
            if self._clusters
            else np.empty((0, dimension), dtype=np.float32)
        )
        self._radii = np.asarray([c.radius for c in self._clusters], dtype=np.float64)

    def of(self, position: int) -> int:
        """The item's cluster id (NO_CLUSTER: none)."""
        return int(self._item_clusters[position])

    @property
    def unclustered(self) -> int:
        return int(np.count_nonzero(self._item_clusters == contract.NO_CLUSTER))

    def represented(self, representatives: int, vectors: np.ndarray) -> list[RepresentedCluster]:
        """Every cluster, largest first, with its first `representatives` representatives;
        `vectors`: the index's normalized item vectors."""
        out = []
        for cluster, centroid in zip(self._clusters, self._centroids, strict=True):
            chosen = np.asarray(list(cluster.representatives)[:representatives], dtype=np.int64)
            similarities = vectors[chosen] @ centroid if len(chosen) else np.empty(0, np.float32)
            out.append(RepresentedCluster(cluster, chosen, similarities))
        return out

    def assign(self, vectors: np.ndarray) -> list[ClusterAssignment]:
        """Nearest cluster by cosine of each normalized vector [n, dimension]; new (NO_CLUSTER)
        beyond the cluster's radius."""
        if not len(self._clusters):
            return [ClusterAssignment(contract.NO_CLUSTER, True, 0.0) for _ in range(len(vectors))]
        similarity = vectors @ self._centroids.T
        nearest = similarity.argmax(axis=1)
        out = []
        for row, index in enumerate(nearest.tolist()):
            best = float(similarity[row, index])
            if 1.0 - best > self._radii[index]:
                out.append(ClusterAssignment(contract.NO_CLUSTER, True, best))
            else:
                out.append(ClusterAssignment(int(self._clusters[index].id), False, best))
        return out


class TagSuggester:
    """Tags to suggest for an item, from its neighbours and from the trusted tag pairs."""

    def __init__(self, catalog: manifest_pb2.ItemCatalog, attributes: ItemAttributes) -> None:
        self._attributes = attributes
        # Trusted pairs, both ways: tag -> (partner tags, their co-occurrence support in [0, 1]).
        partners: dict[int, list[tuple[int, float]]] = {}
        for pair in catalog.tag_pairs:
            support = min(1.0, max(0.0, math.log(pair.lift)) / math.log(LIFT_CEILING))
            partners.setdefault(pair.a, []).append((pair.b, support))
            partners.setdefault(pair.b, []).append((pair.a, support))
        self._partners = {
            t: (np.asarray([p for p, _ in pairs], dtype=np.int64), np.asarray([s for _, s in pairs]))
            for t, pairs in partners.items()
        }

    def suggest(
        self, positions: np.ndarray, similarities: np.ndarray, present: Collection[int], top_k: int
    ) -> list[TagSuggestion]:
        """Tags not `present`, scored from the neighbours' tags (at catalog `positions`, weighted
        by their `similarities`) and from their co-occurrence with the present tags (half each
        when tags are present)."""
        tag_names = self._attributes.tag_names
        n_tags = len(tag_names)
        from_neighbours = np.zeros(n_tags)
        positive = similarities > 0
        weights = similarities[positive].astype(np.float64)
        for position, weight in zip(positions[positive].tolist(), weights.tolist(), strict=True):
            from_neighbours[self._attributes.item_tags(position)] += weight
        if len(weights):
            from_neighbours = np.minimum(from_neighbours / weights.sum(), 1.0)  # 1: rounding aside, every neighbour
        from_cooccurrence = np.zeros(n_tags)
        for tag in present:
            partners = self._partners.get(tag)
            if partners is not None:
                from_cooccurrence[partners[0]] += partners[1]
        weight = 0.0
        if present:
            from_cooccurrence /= len(present)
            weight = 0.5
        scores = (1.0 - weight) * from_neighbours + weight * from_cooccurrence
        scores[list(present)] = 0.0
        candidates = np.flatnonzero(scores > 0).tolist()
        candidates.sort(key=lambda t: (-scores[t], tag_names[t]))
        return [
            TagSuggestion(tag_names[t], float(scores[t]), float(from_neighbours[t]), float(from_cooccurrence[t]))
            for t in candidates[:top_k]
        ]
