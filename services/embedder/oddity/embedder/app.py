"""The embedder as a hosted service: loads (exports) its models one by one, ready with the first.

Reason to change: how the embedder is wired and when it reports ready.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from oddity.common.server import HandlerRegistry, Readiness
from oddity.embedder.grpc_api import EmbedderServicer
from oddity.embedder.metrics import EmbedderMetrics
from oddity.embedder.service import EmbedderService
from oddity.embedder.settings import EmbedderSettings
from oddity.v1 import embedder_pb2, embedder_pb2_grpc

SERVICE_NAME = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name


class EmbedderApp:
    """Implements oddity.common.server.HostedApp for the embedder."""

    name = SERVICE_NAME
    admin_methods: frozenset[str] = frozenset()

    def __init__(self, settings: EmbedderSettings, metrics_registry: CollectorRegistry) -> None:
        self.settings = settings
        self.service = EmbedderService(settings, EmbedderMetrics(metrics_registry))
        self._loading: asyncio.Task | None = None

    def register(self, server: HandlerRegistry) -> None:
        embedder_pb2_grpc.add_EmbedderServicer_to_server(EmbedderServicer(self.service), server)

    async def start(self, readiness: Readiness) -> None:
        # Exporting a model can take minutes: load in the background, liveness answers meanwhile.
        # Ready with the first model that serves; each model's own readiness is
        # "oddity.v1.Embedder/<model>" (NOT_SERVING while loading or when it failed).
        async def load() -> None:
            order = self.service.load_order()
            for name in order:
                await readiness.set_part(name, False)
            for name in order:
                loaded = await asyncio.to_thread(self.service.load, name)
                await readiness.set_part(name, loaded)
                if loaded:
                    await readiness.set(True)

        self._loading = asyncio.create_task(load(), name="oddity-embedder-load")

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            await asyncio.gather(self._loading, return_exceptions=True)
        await self.service.close()
