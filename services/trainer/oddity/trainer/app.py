"""The trainer as a hosted service: recovery, file watching, periodic scans, the servicer."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry
from watchfiles import awatch

from oddity.common.logging import get_logger
from oddity.common.server import Readiness
from oddity.trainer.metrics import TrainerMetrics
from oddity.trainer.publisher import Publisher
from oddity.trainer.service import TrainerService
from oddity.trainer.servicer import TrainerServicer
from oddity.trainer.settings import TrainerSettings
from oddity.v1 import trainer_pb2, trainer_pb2_grpc

log = get_logger("oddity.trainer")

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name


class TrainerApp:
    """Implements oddity.common.server.HostedApp for the trainer."""

    name = SERVICE_NAME

    def __init__(self, settings: TrainerSettings, metrics_registry: CollectorRegistry) -> None:
        self.settings = settings
        self.service = TrainerService(
            settings.data_volume,
            Publisher(settings.model_repository, settings.detectors),
            TrainerMetrics(metrics_registry),
            max_concurrent_jobs=settings.max_concurrent_jobs,
            embedder=settings.embedder,
        )
        self._tasks: list[asyncio.Task] = []
        self._debounce: dict[str, asyncio.Task] = {}

    def register(self, server: grpc.aio.Server) -> None:
        trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(self.service), server)

    async def start(self, readiness: Readiness) -> None:
        self.service.datasets_root.mkdir(parents=True, exist_ok=True)
        self.settings.model_repository.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.service.recover)
        self.service.jobs.bind(asyncio.get_running_loop())
        await self.service.auto_train("startup")
        if self.settings.watch:
            self._tasks.append(asyncio.create_task(self._watch(), name="oddity-trainer-watch"))
        self._tasks.append(asyncio.create_task(self._scan(), name="oddity-trainer-scan"))
        await readiness.set(True)

    async def _watch(self) -> None:
        """File events, debounced per dataset by its spec's debounce_seconds."""
        root = self.service.datasets_root
        async for changes in awatch(
            root, force_polling=self.settings.force_polling, recursive=True, step=100, rust_timeout=1000
        ):
            names = set()
            for _, path in changes:
                relative = Path(path).relative_to(root) if Path(path).is_relative_to(root) else None
                if relative is not None and relative.parts:
                    names.add(relative.parts[0])
            for name in names:
                self._schedule(name)

    def _schedule(self, name: str) -> None:
        previous = self._debounce.pop(name, None)
        if previous is not None:
            previous.cancel()
        self._debounce[name] = asyncio.create_task(self._after_quiet(name))

    async def _after_quiet(self, name: str) -> None:
        await asyncio.sleep(self.service.debounce_seconds(name))
        self._debounce.pop(name, None)
        try:
            await self.service.auto_train("file_change", only={name})
        except Exception:
            log.exception("automatic training failed to start", dataset=name)

    async def _scan(self) -> None:
        """Fallback for missed events and the clock for interval datasets."""
        while True:
            await asyncio.sleep(self.settings.scan_interval_seconds)
            try:
                await self.service.auto_train("scan")
            except Exception:
                log.exception("dataset scan failed")

    async def stop(self) -> None:
        for task in [*self._tasks, *self._debounce.values()]:
            task.cancel()
        for task in [*self._tasks, *self._debounce.values()]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.service.close()
