"""Which columns of a table a model reads: its features, in the manifest's order, and the
column that routes each row to its group.

A model's manifest names its features (`feature_names`) and, for models trained per group,
the routing key (e.g. `age`; never a feature). A table may hold more columns (ids,
timestamps, labels): only these are sent. A manifest without feature names takes every
numeric column but the routing key, in the table's order.

Reason to change: how table columns map onto a model's inputs.
"""

from __future__ import annotations

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
class FeatureLayout:
    model: str
    version: int
    feature_names: tuple[str, ...]  # empty: every numeric column but the routing key
    dimension: int
    routing_key: str  # empty: the model has one group for every row
    classifier: bool

    @classmethod
    def of(cls, manifest: manifest_pb2.ModelManifest) -> FeatureLayout:
        return cls(
            model=manifest.name,
            version=manifest.version,
            feature_names=tuple(manifest.feature_names),
            dimension=manifest.input_dimension,
            routing_key=manifest.routing_key,
            classifier=manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION,
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
        rows = _numeric(frame, names, np.float32)
        routing = _numeric(frame, [self.routing_key], np.float64)[:, 0].tolist() if self.routes(columns) else None
        return ModelRows(rows=rows, feature_names=names, routing_values=routing)


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
