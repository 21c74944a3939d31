"""A uniform sample of at most `limit` rows per group, kept while the rows stream past, and
figures of every column over all rows.

Each row draws one uniform random key; a group's sample is its `limit` rows with the smallest
keys (bottom-k), which is a uniform random subset of the group's rows however they arrive in
chunks. The `all` group uses the same keys over every row, so one row can serve its routing
group and `all` at once and is stored once. Rows are buffered while their key could still make
a sample and the buffer is cut back to the samples when it doubles: memory stays within about
twice the samples, whatever the number of rows.

Reason to change: how training rows are chosen from data larger than memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

IN_GROUP = 1  # the row is in its routing group's sample
IN_ALL = 2  # the row is in the `all` group's sample


@dataclass
class Sampled:
    """The sample: each payload's rows (in the order they were read) and, per row, which
    samples it is in (IN_GROUP | IN_ALL bits)."""

    payload: dict[str, np.ndarray]
    frame: pd.DataFrame | None
    membership: np.ndarray


class RowSample:
    """Bottom-k samples of `limit` rows: one per routing group (`groups` of them; rows of
    group -1 are in none), and one over every row when `all_group`."""

    def __init__(self, limit: int, groups: int, all_group: bool, seed: int = 0) -> None:
        self.limit = limit
        self.groups = groups
        self.all_group = all_group
        self._rng = np.random.default_rng(seed)
        # The key a row must be below to enter each sample (inf until the sample is full).
        self._group_bound = np.full(max(groups, 1), np.inf)
        self._all_bound = np.inf if all_group else -np.inf
        self._parts: list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], pd.DataFrame | None]] = []
        self._buffered = 0
        self._room = 2 * limit * (groups + int(all_group)) + 4096

    def offer(self, group: np.ndarray, payload: dict[str, np.ndarray], frame: pd.DataFrame | None = None) -> None:
        """Rows read next: their routing group (-1: none) and what to keep of each."""
        keys = self._rng.random(len(group))
        in_group = group >= 0
        bound = np.where(in_group, self._group_bound[np.maximum(group, 0)], -np.inf)
        wanted = (keys < bound) | (keys < self._all_bound)
        if not wanted.any():
            return
        rows = np.flatnonzero(wanted)
        kept = {name: values[rows] for name, values in payload.items()}
        kept_frame = frame.iloc[rows].reset_index(drop=True) if frame is not None else None
        self._parts.append((keys[rows], group[rows], kept, kept_frame))
        self._buffered += len(rows)
        if self._buffered > self._room:
            self._cut()

    def result(self) -> Sampled:
        membership = self._cut()
        if not self._parts:
            return Sampled({}, None, np.zeros(0, dtype=np.uint8))
        _, _, payload, frame = self._parts[0]
        return Sampled(payload, frame, membership)

    def _cut(self) -> np.ndarray:
        """Back to the samples; returns each kept row's membership bits."""
        if not self._parts:
            return np.zeros(0, dtype=np.uint8)
        keys = np.concatenate([p[0] for p in self._parts])
        group = np.concatenate([p[1] for p in self._parts])
        membership = np.zeros(len(keys), dtype=np.uint8)
        for g in range(self.groups):
            rows = np.flatnonzero(group == g)
            chosen, self._group_bound[g] = self._smallest(keys, rows)
            membership[chosen] |= IN_GROUP
        if self.all_group:
            chosen, self._all_bound = self._smallest(keys, np.arange(len(keys)))
            membership[chosen] |= IN_ALL
        keep = np.flatnonzero(membership)  # in reading order
        payload = {name: np.concatenate([p[2][name] for p in self._parts])[keep] for name in self._parts[0][2]}
        frames = [p[3] for p in self._parts if p[3] is not None]
        frame = pd.concat(frames, ignore_index=True).iloc[keep].reset_index(drop=True) if frames else None
        self._parts = [(keys[keep], group[keep], payload, frame)]
        self._buffered = len(keep)
        return membership[keep]

    def _smallest(self, keys: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """The rows (of `rows`) with the `limit` smallest keys, and the key a new row must beat."""
        if len(rows) <= self.limit:
            return rows, np.inf
        nth = np.argpartition(keys[rows], self.limit - 1)[: self.limit]
        chosen = rows[nth]
        return chosen, float(keys[chosen].max())


@dataclass
class ColumnFigures:
    """Count, missing, mean, min and max of each column over every row read."""

    names: list[str]
    count: np.ndarray = field(init=False)
    missing: np.ndarray = field(init=False)
    total: np.ndarray = field(init=False)
    low: np.ndarray = field(init=False)
    high: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        d = len(self.names)
        self.count, self.missing = np.zeros(d, dtype=np.int64), np.zeros(d, dtype=np.int64)
        self.total = np.zeros(d)
        self.low, self.high = np.full(d, np.inf), np.full(d, -np.inf)

    def add(self, values: np.ndarray) -> None:
        """Rows of the columns' values (NaN or inf: missing or unusable)."""
        finite = np.isfinite(values)
        self.count += finite.sum(axis=0)
        self.missing += (~finite).sum(axis=0)
        clean = np.where(finite, values, 0.0)
        self.total += clean.sum(axis=0)
        self.low = np.minimum(self.low, np.where(finite, values, np.inf).min(axis=0, initial=np.inf))
        self.high = np.maximum(self.high, np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf))

    def as_dict(self) -> dict[str, dict[str, Any]]:
        figures: dict[str, dict[str, Any]] = {}
        for j, name in enumerate(self.names):
            n = int(self.count[j])
            figures[name] = {
                "count": n,
                "missing": int(self.missing[j]),
                "mean": float(self.total[j] / n) if n else None,
                "min": float(self.low[j]) if n else None,
                "max": float(self.high[j]) if n else None,
            }
        return figures
