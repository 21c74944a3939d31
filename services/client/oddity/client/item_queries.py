"""What to look for in a model's indexed items, as SDK callers say it: one item (`Query`) and
which items to keep (`Filter`), made into the Detector API's ItemQuery and MetadataFilter.

    detector.similar("library", item_id="img-17", top_k=5, exclude_self=True,
                     filters={"subject": ["face", "car"], "age": (3, 6)})

Filters combine with AND. As a mapping, a column's value says which filter it is:
    "face"              text equality            Filter.equals("subject", "face")
    ["face", "car"]     any one of these texts   Filter.equals("subject", "face", "car")
    7 (a number)        exactly this number      Filter.between("age", 7, 7)
    (3, 6)              within [3, 6]; None      Filter.between("age", 3, 6)
                        leaves an end open
Numbers compare as numbers on numeric columns; texts compare as texts.

Reason to change: how a query or a filter on indexed items is said, or the messages they make.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from oddity.common.tensors import array_to_tensor
from oddity.v1 import detector_pb2

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
