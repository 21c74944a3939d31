"""The training history: one JSON object per line on the data volume,
{timestamp, event_type, dataset, message, details}.

Reason to change: the history's format and event types.
"""

from __future__ import annotations

import json
import os
import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EVENT_TYPES = (
    "TRAINING_STARTED",
    "TRAINING_COMPLETED",
    "TRAINING_FAILED",
    "TRAINING_SKIPPED",
    "TRAINING_STOPPED",  # the trainer stopped (SIGTERM, Ctrl-C) while the job ran
    "PUBLISHED",
    "ROLLED_BACK",
    "THRESHOLD_CHANGED",
)


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, event_type: str, dataset: str, message: str, **details: Any) -> dict[str, Any]:
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        event = {
            "timestamp": datetime.now(UTC).isoformat(),
            "event_type": event_type,
            "dataset": dataset,
            "message": message,
            "details": details,
        }
        line = json.dumps(event, default=_jsonable, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        return event

    def read(self, dataset: str = "", event_types: tuple[str, ...] = (), limit: int = 100) -> list[dict[str, Any]]:
        """The newest `limit` matching events, oldest first. Unreadable lines are skipped."""
        matches: deque[dict[str, Any]] = deque(maxlen=limit)
        try:
            with self.path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if dataset and event.get("dataset") != dataset:
                        continue
                    if event_types and event.get("event_type") not in event_types:
                        continue
                    matches.append(event)
        except FileNotFoundError:
            return []
        return list(matches)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)
