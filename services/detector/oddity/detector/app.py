"""The detector as a hosted service: wires registry, use cases, gRPC API, the embedder client,
the repository poller and readiness.

Reason to change: how the detector's parts are put together and run in the host.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import CollectorRegistry

from oddity.common.clients import EmbedderClient
from oddity.common.logging import get_logger
from oddity.common.scoring import SessionConfig
from oddity.common.server import HandlerRegistry, Readiness
from oddity.detector import oip_api
from oddity.detector.grpc_api import DetectorServicer, add_to_server
from oddity.detector.metrics import DetectorMetrics
from oddity.detector.model import LoadedModel
from oddity.detector.registry import ModelRegistry
from oddity.detector.service import DetectLimits, DetectorService
from oddity.detector.settings import DetectorSettings
from oddity.detector.similarity_service import SimilarityService
from oddity.v1 import detector_pb2

log = get_logger("oddity.detector")

SERVICE_NAME = detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name


class DetectorApp:
    """Implements oddity.common.server.HostedApp for the detector."""

    name = SERVICE_NAME
    admin_methods = frozenset({"LoadModel", "UnloadModel"})
    # Served beside oddity.v1, its descriptors in a pool of their own: listed by reflection too.
    other_pool_files = (oip_api.SERVICE.file,)

    def __init__(self, settings: DetectorSettings, metrics_registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = DetectorMetrics(metrics_registry)
        config = SessionConfig(
            intra_op_threads=settings.intra_op_threads,
            bulk_intra_op_threads=settings.bulk_intra_op_threads,
            warmup_batch_size=settings.warmup_batch_size,
            run_memory_budget_bytes=settings.run_memory_budget_mb << 20,
        )
        self.model_registry = ModelRegistry(
            settings.model_repository,
            lambda verified: LoadedModel(verified, config),
            self.metrics,
            pinned=settings.pinned_versions,
        )
        self._embedder: EmbedderClient | None = None
        self._readiness: Readiness | None = None
        self.service = DetectorService(
            self.model_registry,
            self.metrics,
            limits=DetectLimits(
                max_rows=settings.max_rows_per_request,
                inline_max_values=settings.inline_max_values,
                max_batch_rows=settings.max_batch_rows,
                max_batch_values=settings.max_batch_values,
                inline_max_batch_values=settings.inline_max_batch_values,
                inline_max_batch_seconds=settings.inline_max_batch_ms / 1000,
                max_batch_delay=settings.max_batch_delay_ms / 1000,
            ),
            workers=settings.inference_workers,
            worker_nice=settings.inference_worker_nice,
            embedder=self._embedder_client if settings.embedder else None,
            on_serving_changed=self._serving_changed,
        )
        self.similarity = SimilarityService(
            self.model_registry,
            self.metrics,
            embedder=self._embedder_client if settings.embedder else None,
        )
        self._poller: asyncio.Task | None = None

    def _embedder_client(self) -> EmbedderClient:
        """The one embedder client, made at first use on the serving loop: its grpc.aio
        channel belongs to the loop that creates it, and the app is built before that loop
        runs (requests may arrive before start() too)."""
        if self._embedder is None:
            self._embedder = EmbedderClient(
                self.settings.embedder,
                timeout=self.settings.embedder_timeout_seconds,
                # An embedder that restarts is waited for (within the deadline), not refused.
                wait_for_ready=True,
                max_message_bytes=self.settings.max_message_bytes,
                token_file=self.settings.embedder_token_file,
                tls=self.settings.tls(),
            )
        return self._embedder

    async def _serving_changed(self, serving: bool) -> None:
        if self._readiness is not None:
            await self._readiness.set(serving)

    def register(self, server: HandlerRegistry) -> None:
        add_to_server(DetectorServicer(self.service, self.similarity), server)
        # The Open Inference Protocol (KServe v2) on the same port, over the same use cases.
        oip_api.add_to_server(oip_api.InferenceServicer(self.service), server)

    async def start(self, readiness: Readiness) -> None:
        self._readiness = readiness
        if self.settings.embedder:
            self._embedder_client().channel.get_state(try_to_connect=True)  # connect before the first call
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
        if self._embedder is not None:
            await self._embedder.close()
        await asyncio.to_thread(self.service.close)
