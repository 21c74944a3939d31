"""What operators decided, kept until it no longer applies: a rollback holds the restored
version until the data changes (or, with `retrain.after_rollback: hold`, until Train is
called); a threshold override is carried into every later version until it is cleared.

Decisions live in `<data volume>/.oddity/decisions/<dataset>.json`, written atomically, so
they outlive restarts.

Reason to change: which operator decisions the trainer keeps, and for how long.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class Pin:
    """A rollback: `version` (a copy of `restored_from`) serves while the data fingerprint is
    `fingerprint`; `hold` keeps it even after the data changes, until Train."""

    version: int
    restored_from: int
    fingerprint: str
    hold: bool = False


@dataclass(frozen=True)
class Decisions:
    pin: Pin | None = None
    threshold_percentile: float = 0.0  # 0: the spec's threshold_percentile


class DecisionBook:
    """Every dataset's decisions, persisted on the data volume. The trainer is their only
    writer, so each file is read once and then kept in memory (scans ask on every pass)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._known: dict[str, Decisions] = {}

    def get(self, dataset: str) -> Decisions:
        with self._lock:
            known = self._known.get(dataset)
            if known is None:
                known = self._known[dataset] = self._read(dataset)
            return known

    def _read(self, dataset: str) -> Decisions:
        try:
            raw = json.loads((self.folder / f"{dataset}.json").read_text())
        except (FileNotFoundError, ValueError):
            return Decisions()
        pin = raw.get("pin")
        return Decisions(
            pin=Pin(**pin) if isinstance(pin, dict) else None,
            threshold_percentile=float(raw.get("threshold_percentile") or 0.0),
        )

    def pin(self, dataset: str, pin: Pin) -> None:
        self._update(dataset, lambda d: replace(d, pin=pin))

    def unpin(self, dataset: str) -> None:
        self._update(dataset, lambda d: replace(d, pin=None))

    def set_threshold(self, dataset: str, percentile: float) -> None:
        self._update(dataset, lambda d: replace(d, threshold_percentile=percentile))

    def _update(self, dataset: str, change) -> None:
        with self._lock:
            decisions = change(self._known.get(dataset) or self._read(dataset))
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{dataset}.json"
            if decisions == Decisions():
                path.unlink(missing_ok=True)
            else:
                temporary = path.with_suffix(".json.tmp")
                temporary.write_text(json.dumps(asdict(decisions), sort_keys=True))
                os.replace(temporary, path)
            self._known[dataset] = decisions
