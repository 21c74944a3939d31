"""Making a published version known: the PUBLISHED history event and the live-version metric
(`record`), then every detector asked to load it now (`notify`: concurrently; a detector that
cannot be reached is only logged, it finds the version by polling).

The detectors are fixed addresses plus every address of each named detector service (a
Kubernetes headless Service resolves to one address per replica), resolved again before each
notification so replicas that come and go are followed.

Reason to change: who learns of a new version, and how.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from typing import Any

from oddity.common.clients import DetectorAdminClient
from oddity.common.errors import OddityError
from oddity.common.logging import get_logger
from oddity.trainer.history import History
from oddity.trainer.metrics import TrainerMetrics

log = get_logger("oddity.trainer.announcer")


#: Makes the client of one detector: (address, name its certificate is checked against or None).
ClientFactory = Callable[[str, "str | None"], DetectorAdminClient]


class DetectorFleet:
    """The detectors to notify: one client per fixed address and per resolved replica address."""

    def __init__(self, addresses: Sequence[str], services: Sequence[str], make_client: ClientFactory) -> None:
        self._make_client = make_client
        self._fixed = [make_client(address, None) for address in addresses]
        self._services = list(services)
        self._resolved: dict[str, DetectorAdminClient] = {}

    async def clients(self) -> list[DetectorAdminClient]:
        if not self._services:
            return list(self._fixed)
        loop = asyncio.get_running_loop()
        current: dict[str, DetectorAdminClient] = {}
        for service in self._services:
            host, _, port = service.rpartition(":")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except (OSError, ValueError) as exc:
                log.warning("detector service not resolved; its replicas will poll", service=service, error=str(exc))
                continue
            for family, _, _, _, sockaddr in infos:
                ip = str(sockaddr[0])
                address = f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}"
                client = self._resolved.get(address) or current.get(address)
                current[address] = client or self._make_client(address, host)
        for address, client in self._resolved.items():
            if address not in current:  # a replica that is gone
                await client.close()
        self._resolved = current
        return [*self._fixed, *current.values()]

    async def close(self) -> None:
        for client in [*self._fixed, *self._resolved.values()]:
            await client.close()


class Announcer:
    def __init__(self, history: History, metrics: TrainerMetrics, detectors: DetectorFleet) -> None:
        self.history = history
        self.metrics = metrics
        self.detectors = detectors

    def record(self, dataset: str, model: str, version: int, **details: Any) -> None:
        """History and metric (blocking: writes the history file)."""
        self.history.append(
            "PUBLISHED", dataset, f"published {model} version {version}", version=version, model=model, **details
        )
        self.metrics.live_version.labels(dataset, model).set(version)

    async def notify(self, model: str, *, request_id: str | None = None) -> None:
        """LoadModel on every detector at once; failures are logged only."""
        detectors = await self.detectors.clients()
        results = await asyncio.gather(
            *(detector.load_model(model, request_id=request_id) for detector in detectors),
            return_exceptions=True,
        )
        for detector, result in zip(detectors, results, strict=True):
            if isinstance(result, OddityError):
                log.warning(
                    "detector not notified; it will poll", detector=detector.target, model=model, error=result.message
                )
            elif isinstance(result, BaseException):
                log.error("detector notification failed", detector=detector.target, model=model, exc_info=result)
