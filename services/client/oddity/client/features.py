"""Which columns of a table a model reads: its features, in the manifest's order, and the
column that routes each row to its group.

A model's manifest names its features (`feature_names`) and, for models trained per group,
the routing key (e.g. `age`; never a feature). A table may hold more columns (ids,
timestamps, labels): only these are sent. A manifest without feature names takes every
numeric column but the routing key, in the table's order.

`check` says which rows cannot be scored and why (a blank cell, text where a number belongs, an
infinite value), so a caller can name them or score the rest; `split` leaves that to the
detector.

Reason to change: how table columns map onto a model's inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from oddity.common.errors import InvalidArgument
from oddity.v1 import manifest_pb2


@dataclass(frozen=True)
class ModelRows:
    """A table's rows as a model reads them."""

    rows: np.ndarray  # [rows, features] float32
    feature_names: list[str]
    routing_values: list[float] | None  # None: the table has no routing column


@dataclass(frozen=True)
class CheckedRows:
    """A table's rows sorted into those a model can score and those it cannot."""

    scorable: ModelRows  # the rows that can be scored, in the table's order
    mask: np.ndarray  # [rows] bool: which of the table's rows `scorable` holds
    problems: dict[int, str]  # position in the table (from 0) -> why that row cannot be scored


@dataclass(frozen=True)
class FeatureLayout:
    model: str
    version: int
    feature_names: tuple[str, ...]  # empty: every numeric column but the routing key
    dimension: int
    routing_key: str  # empty: the model has one group for every row
    classifier: bool
    class_labels: tuple[str, ...] = ()  # classifiers: their classes, in the order of their probabilities
    score_column: str = ""  # classifiers with a regression head: what `predicted_score` predicts

    @classmethod
    def of(cls, manifest: manifest_pb2.ModelManifest) -> FeatureLayout:
        return cls(
            model=manifest.name,
            version=manifest.version,
            feature_names=tuple(manifest.feature_names),
            dimension=manifest.input_dimension,
            routing_key=manifest.routing_key,
            classifier=manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION,
            class_labels=tuple(manifest.class_labels),
            score_column=manifest.score_column,
        )

    def missing_columns(self, columns: list[str]) -> list[str]:
        present = set(columns)
        return [name for name in self.feature_names if name not in present]

    def routes(self, columns: list[str]) -> bool:
        """Whether a table with these columns gives each row its routing value."""
        return bool(self.routing_key) and self.routing_key in columns

    def split(self, frame: pd.DataFrame) -> ModelRows:
        """The model's features and routing values of `frame`; InvalidArgument names what is
        missing or not numeric."""
        columns = [str(c) for c in frame.columns]
        frame = frame.set_axis(columns, axis="columns")
        names = self._feature_columns(frame, columns)
        rows = _numeric(frame, names, np.float32)
        routing = _numeric(frame, [self.routing_key], np.float64)[:, 0].tolist() if self.routes(columns) else None
        return ModelRows(rows=rows, feature_names=names, routing_values=routing)

    def check(self, frame: pd.DataFrame) -> CheckedRows:
        """The rows of `frame` that can be scored, split as `split` does, and why each other row
        cannot be (its first column at fault). InvalidArgument for what no row can fix, such as a
        missing column."""
        columns = [str(c) for c in frame.columns]
        frame = frame.set_axis(columns, axis="columns")
        names = self._feature_columns(frame, columns)
        routed = self.routes(columns)
        try:
            with np.errstate(over="ignore"):  # 1e39 is inf in float32: that row is reported
                rows = frame[names].to_numpy(dtype=np.float32, na_value=np.nan)
                routing = frame[self.routing_key].to_numpy(dtype=np.float64, na_value=np.nan) if routed else None
            if np.isfinite(rows).all() and (routing is None or np.isfinite(routing).all()):
                every = np.ones(len(frame), dtype=bool)  # the common case: one conversion, no per-row work
                return CheckedRows(ModelRows(rows, names, None if routing is None else routing.tolist()), every, {})
        except (TypeError, ValueError):
            pass  # some cell is not a number: found below
        checked: list[tuple[str, type[np.floating]]] = [(name, np.float32) for name in names]
        if routed:
            checked.append((self.routing_key, np.float64))
        problems = _row_problems(frame, checked)
        scorable = np.ones(len(frame), dtype=bool)
        scorable[list(problems)] = False
        if not scorable.any():
            empty = np.empty((0, len(names)), dtype=np.float32)
            return CheckedRows(ModelRows(empty, names, [] if routed else None), scorable, problems)
        return CheckedRows(self.split(frame[scorable]), scorable, problems)

    def _feature_columns(self, frame: pd.DataFrame, columns: list[str]) -> list[str]:
        if self.feature_names:
            missing = self.missing_columns(columns)
            if missing:
                raise InvalidArgument(f"model {self.model!r} needs columns that are missing: {', '.join(missing)}")
            names = list(self.feature_names)
        else:
            names = [c for c in columns if c != self.routing_key and pd.api.types.is_numeric_dtype(frame[c])]
            if len(names) != self.dimension:
                raise InvalidArgument(
                    f"model {self.model!r} reads {self.dimension} unnamed features; "
                    f"the table has {len(names)} numeric columns: {', '.join(names)}"
                )
        return names


def _numeric(frame: pd.DataFrame, names: list[str], dtype: type[np.floating]) -> np.ndarray:
    try:
        return frame[names].to_numpy(dtype=dtype, na_value=np.nan)
    except (TypeError, ValueError):
        for name in names:  # name the first column at fault
            try:
                frame[name].to_numpy(dtype=dtype, na_value=np.nan)
            except (TypeError, ValueError) as exc:
                raise InvalidArgument(f"column {name!r} is not numeric: {exc}") from None
        raise


def _row_problems(frame: pd.DataFrame, checked: list[tuple[str, type[np.floating]]]) -> dict[int, str]:
    """Position -> the first checked column at fault in that row, in column order; by position."""
    problems: dict[int, str] = {}
    for name, dtype in checked:
        for position, reason in _cell_problems(frame[name], name, dtype).items():
            problems.setdefault(position, reason)
    return dict(sorted(problems.items()))


def _cell_problems(values: pd.Series, name: str, dtype: type[np.floating]) -> dict[int, str]:
    """Position -> why that cell of one column is not a number the model can read."""
    try:
        with np.errstate(over="ignore"):
            numbers = values.to_numpy(dtype=dtype, na_value=np.nan)
    except (TypeError, ValueError):  # text among the numbers: cell by cell, as numpy converts them
        return {
            i: reason for i, cell in enumerate(values.to_numpy(dtype=object)) if (reason := _problem(cell, name, dtype))
        }
    cells = values.to_numpy(dtype=object)
    return {
        int(i): _problem(cells[i], name, dtype) or f"value {_shown(cells[i])} in column {name!r} is not finite"
        for i in np.flatnonzero(~np.isfinite(numbers))
    }


def _problem(cell: object, name: str, dtype: type[np.floating]) -> str | None:
    if cell is None or cell is pd.NA or cell is pd.NaT or (isinstance(cell, str) and not cell.strip()):
        return f"blank value in column {name!r}"
    try:
        number = float(cell)  # type: ignore[arg-type]  # as numpy converts a column of objects
    except (TypeError, ValueError):
        return f"value {_shown(cell)} in column {name!r} is not a number"
    if math.isnan(number):
        return f"blank value in column {name!r}"
    if not math.isfinite(number):
        return f"value {_shown(cell)} in column {name!r} is not finite"
    with np.errstate(over="ignore"):
        if not np.isfinite(dtype(number)):
            return f"value {_shown(cell)} in column {name!r} is beyond the range of {np.dtype(dtype).name}"
    return None


def _shown(cell: object) -> str:
    text = repr(cell) if isinstance(cell, str) else str(cell)
    return text if len(text) <= 40 else f"{text[:37]}..."
