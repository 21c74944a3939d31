"""Making a published version known: the PUBLISHED history event and the live-version metric
(`record`), then every configured detector asked to load it now (`notify`: concurrently; a
detector that cannot be reached is only logged, it finds the version by polling).

Reason to change: who learns of a new version, and how.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from oddity.common.clients import DetectorAdminClient
from oddity.common.errors import OddityError
from oddity.common.logging import get_logger
from oddity.trainer.history import History
from oddity.trainer.metrics import TrainerMetrics

log = get_logger("oddity.trainer.announcer")


class Announcer:
    def __init__(self, history: History, metrics: TrainerMetrics, detectors: Sequence[DetectorAdminClient]) -> None:
        self.history = history
        self.metrics = metrics
        self.detectors = list(detectors)

    def record(self, dataset: str, model: str, version: int, **details: Any) -> None:
        """History and metric (blocking: writes the history file)."""
        self.history.append(
            "PUBLISHED", dataset, f"published {model} version {version}", version=version, model=model, **details
        )
        self.metrics.live_version.labels(dataset).set(version)

    async def notify(self, model: str, *, request_id: str | None = None) -> None:
        """LoadModel on every configured detector at once; failures are logged only."""
        results = await asyncio.gather(
            *(detector.load_model(model, request_id=request_id) for detector in self.detectors),
            return_exceptions=True,
        )
        for detector, result in zip(self.detectors, results, strict=True):
            if isinstance(result, OddityError):
                log.warning(
                    "detector not notified; it will poll", detector=detector.target, model=model, error=result.message
                )
            elif isinstance(result, BaseException):
                log.error("detector notification failed", detector=detector.target, model=model, exc_info=result)
