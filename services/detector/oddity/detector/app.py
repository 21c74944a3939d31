"""The detector as a hosted service: wires registry, poller, servicer and readiness."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from prometheus_client import CollectorRegistry

from oddity.common.logging import get_logger
from oddity.common.server import Readiness
from oddity.detector.embedding import EmbedderClient
from oddity.detector.metrics import DetectorMetrics
from oddity.detector.model import LoadedModel
from oddity.detector.registry import ModelRegistry
from oddity.detector.service import DetectLimits, DetectorService
from oddity.detector.servicer import DetectorServicer
from oddity.detector.sessions import SessionConfig
from oddity.detector.settings import DetectorSettings
from oddity.v1 import detector_pb2, detector_pb2_grpc

log = get_logger("oddity.detector")

SERVICE_NAME = detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name


class DetectorApp:
    """Implements oddity.common.server.HostedApp for the detector."""

    name = SERVICE_NAME

    def __init__(self, settings: DetectorSettings, metrics_registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = DetectorMetrics(metrics_registry)
        config = SessionConfig(
            intra_op_threads=settings.intra_op_threads,
            bulk_intra_op_threads=settings.bulk_intra_op_threads,
            warmup_batch_size=settings.warmup_batch_size,
        )
        self.model_registry = ModelRegistry(
            settings.model_repository,
            lambda verified: LoadedModel(verified, config),
            self.metrics,
            pinned=settings.pinned_versions,
        )
        self.service = DetectorService(
            self.model_registry,
            self.metrics,
            limits=DetectLimits(
                max_rows=settings.max_rows_per_request,
                inline_max_values=settings.inline_max_values,
                max_batch_rows=settings.max_batch_rows,
                max_batch_delay=settings.max_batch_delay_ms / 1000,
            ),
            workers=settings.inference_workers,
        )
        self._poller: asyncio.Task | None = None

    def register(self, server: grpc.aio.Server) -> None:
        detector_pb2_grpc.add_DetectorServicer_to_server(DetectorServicer(self.service), server)

    async def start(self, readiness: Readiness) -> None:
        self.service.on_serving_changed = readiness.set
        if self.settings.embedder:
            self.service.embedder = EmbedderClient(
                self.settings.embedder, self.settings.embedder_timeout_seconds, self.settings.max_message_bytes
            )
        if not self.settings.model_repository.is_dir():
            log.warning("model repository missing; waiting for it", path=str(self.settings.model_repository))
        await self.refresh()
        self._poller = asyncio.create_task(self._poll(), name="oddity-detector-poll")

    async def refresh(self) -> None:
        """One scan; readiness follows whether any model can serve."""
        try:
            await self.service.refresh()
        except Exception:  # a scan error (e.g. the volume went away) must not kill the poller
            log.exception("repository scan failed")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_seconds)
            await self.refresh()

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self.service.embedder is not None:
            await self.service.embedder.close()
        await asyncio.to_thread(self.service.close)
