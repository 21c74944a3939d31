"""Which group scores each row: routing values against the groups' bounds (`[lower, upper)`,
the last group closed above), and the `all` group for rows whose own group has no active model
(`fallback`) or for requests without routing values (also flagged `fallback`: the rows were
not scored by their own group).

Reason to change: the routing rules (bounds, the `all` fallback, checks on routing values).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oddity.common import bundle
from oddity.common.errors import FailedPrecondition, InvalidArgument
from oddity.v1 import manifest_pb2

# One routing value per row, or one for all rows, or none (the `all` group); the micro-batcher
# passes the concatenated values of its requests as an array.
RoutingValues = Sequence[float] | np.ndarray


@dataclass(frozen=True, slots=True)
class GroupBounds:
    """Where one group of a version sits on the routing key."""

    name: str
    index: int  # position among the manifest's groups
    lower: float
    upper: float
    upper_inclusive: bool
    active: bool
    status: str  # the manifest's GroupStatus name, for messages

    def contains(self, values: np.ndarray) -> np.ndarray:
        upper_ok = values <= self.upper if self.upper_inclusive else values < self.upper
        return (values >= self.lower) & upper_ok


class Router:
    """Routes the rows of one model version."""

    def __init__(self, model: str, routing_key: str, groups: Sequence[GroupBounds]) -> None:
        self.model = model
        self.routing_key = routing_key
        self.groups = tuple(groups)
        all_group = next((g for g in groups if g.name == bundle.ALL_GROUP and g.active), None)
        self._all = all_group
        self._bounded = [g for g in groups if g.name != bundle.ALL_GROUP]
        # Answers without routing: the one group of an unrouted model, or `all` (tuples: shared, never changed).
        self._single = (groups[0].index,) if not routing_key else None
        self._all_only = (all_group.index,) if all_group is not None else None

    @classmethod
    def from_manifest(cls, manifest: manifest_pb2.ModelManifest) -> Router:
        groups = []
        for index, group in enumerate(manifest.groups):
            bounds = group.bounds
            groups.append(
                GroupBounds(
                    name=group.name,
                    index=index,
                    lower=bounds.lower if bounds.HasField("lower") else -np.inf,
                    upper=bounds.upper if bounds.HasField("upper") else np.inf,
                    upper_inclusive=bounds.upper_inclusive,
                    active=group.status == manifest_pb2.GROUP_STATUS_ACTIVE,
                    status=manifest_pb2.GroupStatus.Name(group.status),
                )
            )
        return cls(manifest.name, manifest.routing_key, groups)

    def route(self, routing_values: RoutingValues, n: int) -> tuple[Sequence[int], np.ndarray, np.ndarray]:
        """Pick the scoring group of every one of n rows.

        Returns (manifest indices of the groups used, ascending; per row the position of its
        group in that sequence; per-row fallback flag). A row whose group has no active model
        goes to `all` when that group is active, else the request fails naming the row.
        """
        if self._single is not None:
            return self._single, np.zeros(n, dtype=np.intp), np.zeros(n, dtype=bool)
        if len(routing_values) == 0:
            if self._all_only is None:
                raise InvalidArgument(
                    f"model {self.model!r} routes rows by {self.routing_key!r}: set routing_values "
                    "(one per row, or one for all rows)"
                )
            # Not routed: `all` scores the rows in place of their own groups, and says so.
            return self._all_only, np.zeros(n, dtype=np.intp), np.ones(n, dtype=bool)
        if len(routing_values) not in (1, n):
            raise InvalidArgument(f"routing_values has {len(routing_values)} values for {n} rows; give 1 or {n}")
        values = np.asarray(routing_values, dtype=np.float64)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InvalidArgument(f"routing_values[{row}] ({self.routing_key}) is {values[row]}")
        values = np.broadcast_to(values, (n,))
        chosen = np.full(n, -1, dtype=np.intp)
        for group in self._bounded:
            chosen[(chosen < 0) & group.contains(values)] = group.index
        fallback = np.zeros(n, dtype=bool)
        for index in np.unique(chosen):
            own = self.groups[index] if index >= 0 else None
            if own is not None and own.active:
                continue
            rows = chosen == index
            if self._all is None:
                raise self._no_model(values, int(np.flatnonzero(rows)[0]), own)
            chosen[rows] = self._all.index
            fallback |= rows
        used = sorted(set(chosen.tolist()))
        position = np.empty(len(self.groups), dtype=np.intp)
        position[used] = np.arange(len(used))
        return used, position[chosen], fallback

    def _no_model(self, values: np.ndarray, row: int, group: GroupBounds | None) -> FailedPrecondition:
        if group is None:
            return FailedPrecondition(
                f"row {row}: {self.routing_key}={values[row]:g} is outside every group of model "
                f"{self.model!r} and there is no active {bundle.ALL_GROUP!r} group"
            )
        return FailedPrecondition(
            f"row {row}: group {group.name!r} of model {self.model!r} has no active model "
            f"({group.status}) and there is no active {bundle.ALL_GROUP!r} group"
        )
