"""The indexed items' attributes, as a version's catalog stores them: metadata columns and
tags; what an item's metadata and tags read as, and which items metadata and tag filters let
through.

Reason to change: how items' metadata and tags are held and filtered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oddity.common.bundle import index_contract as contract
from oddity.common.errors import InvalidArgument
from oddity.v1 import manifest_pb2


@dataclass(frozen=True, slots=True)
class MetadataFilter:
    column: str
    any_of: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class _Column:
    numeric: bool
    values: np.ndarray  # float64 (NaN: missing) or str ("": missing)


class ItemAttributes:
    """Every item's metadata and tags (positions are catalog positions)."""

    def __init__(self, catalog: manifest_pb2.ItemCatalog, items: int) -> None:
        self.items = items
        self._columns = {
            c.name: _Column(True, np.asarray(c.numbers, dtype=np.float64))
            if c.numeric
            else _Column(False, np.asarray(list(c.text), dtype=str))
            for c in catalog.metadata
        }
        # Tags: the vocabulary, and every item's tags as one flat array (CSR: item i's tags are
        # tag_ids[_tag_start[i]:_tag_start[i + 1]]); tag_items is the item of each entry.
        self.tag_names = list(catalog.tag_names)
        self._tag_position = {t: i for i, t in enumerate(self.tag_names)}
        counts = [len(s.tags) for s in catalog.item_tags] or [0] * items
        self._tag_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.tag_ids = np.asarray([t for s in catalog.item_tags for t in s.tags], dtype=np.int64)
        self.tag_items = np.repeat(np.arange(items, dtype=np.int64), counts)

    # -- reading --------------------------------------------------------------------------

    def item_tags(self, position: int) -> np.ndarray:
        """Tag indices of one item."""
        return self.tag_ids[self._tag_start[position] : self._tag_start[position + 1]]

    def tag_indices(self, tags: Sequence[str]) -> list[int]:
        """Indices of the known tags among `tags` (unknown ones left out), each once."""
        found = (self._tag_position.get(contract.normalize_tag(t)) for t in tags)
        return list(dict.fromkeys(i for i in found if i is not None))

    def tag_list(self, position: int) -> list[str]:
        return [self.tag_names[t] for t in self.item_tags(position).tolist()]

    def metadata(self, position: int) -> dict[str, str]:
        """The item's metadata as text, missing values left out."""
        metadata = {}
        for name, column in self._columns.items():
            value = _format(column.values[position]) if column.numeric else str(column.values[position])
            if value:
                metadata[name] = value
        return metadata

    # -- filters --------------------------------------------------------------------------

    def mask(self, filters: Sequence[MetadataFilter], with_tags: Sequence[str]) -> np.ndarray | None:
        """The items passing every filter and carrying every tag (None: no filter at all). An
        unknown column or a filter that does not fit its column raises InvalidArgument; an
        unknown tag lets no item pass."""
        if not filters and not with_tags:
            return None
        mask = np.ones(self.items, dtype=bool)
        for spec in filters:
            mask &= self._filter(spec)
        for tag in with_tags:
            index = self._tag_position.get(contract.normalize_tag(tag))
            if index is None:
                mask[:] = False
                break
            carrying = np.zeros(self.items, dtype=bool)
            carrying[self.tag_items[self.tag_ids == index]] = True
            mask &= carrying
        return mask

    def _filter(self, spec: MetadataFilter) -> np.ndarray:
        column = self._columns.get(spec.column)
        if column is None:
            known = ", ".join(sorted(self._columns)) or "none"
            raise InvalidArgument(f"filter on unknown metadata column {spec.column!r} (the index has: {known})")
        if not spec.any_of and spec.min is None and spec.max is None:
            raise InvalidArgument(f"the filter on column {spec.column!r} has no any_of, min or max")
        for bound in (spec.min, spec.max):
            if bound is not None and not math.isfinite(bound):
                raise InvalidArgument(f"the filter on column {spec.column!r} has a bound of {bound}")
        values = column.values
        if not column.numeric:
            if spec.min is not None or spec.max is not None:
                raise InvalidArgument(f"metadata column {spec.column!r} holds text: filter it with any_of, not min/max")
            return np.isin(values, list(spec.any_of))
        keep = np.ones(self.items, dtype=bool)
        if spec.any_of:
            keep &= np.isin(values, [_parse_number(spec.column, v) for v in spec.any_of])
        if spec.min is not None:
            keep &= values >= spec.min
        if spec.max is not None:
            keep &= values <= spec.max
        return keep


def _format(number: float) -> str:
    """A metadata number as text: 7 not 7.0, shortest round-trip otherwise; NaN (missing) as ""."""
    if math.isnan(number):
        return ""
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return repr(float(number))


def _parse_number(column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidArgument(f"metadata column {column!r} is numeric; any_of value {text!r} is not a number") from None
