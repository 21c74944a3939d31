"""The trainer as a hosted service: builds its parts (the clients of the embedder and the
detectors on the running loop), recovers after a crash, feeds file events and the periodic
scan to the auto-training policy, and stops in order (policy, jobs, clients).

Reason to change: which parts make the trainer and what drives them.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from prometheus_client import CollectorRegistry
from watchfiles import awatch

from oddity.common.clients import DetectorAdminClient, EmbedderClient, RemoteService
from oddity.common.errors import Unavailable
from oddity.common.logging import get_logger
from oddity.common.server import HandlerRegistry, Readiness
from oddity.trainer import runtime
from oddity.trainer.announcer import Announcer, DetectorFleet
from oddity.trainer.auto_training import AutoTrainer, Backoff
from oddity.trainer.checkpoints import CheckpointStore
from oddity.trainer.datasets import Datasets
from oddity.trainer.decisions import DecisionBook
from oddity.trainer.embedding_cache import EmbeddingCache
from oddity.trainer.grpc_api import TrainerServicer
from oddity.trainer.history import History
from oddity.trainer.jobs import JobBoard
from oddity.trainer.loop_calls import LoopBridge
from oddity.trainer.metrics import TrainerMetrics
from oddity.trainer.publisher import Publisher
from oddity.trainer.runner import EmbedderAccess, JobEnvironment, JobRunner
from oddity.trainer.service import TrainerService
from oddity.trainer.settings import TrainerSettings
from oddity.trainer.tracking import ExperimentTracking
from oddity.v1 import trainer_pb2, trainer_pb2_grpc

log = get_logger("oddity.trainer")

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name


class TrainerApp:
    """Implements oddity.common.server.HostedApp for the trainer."""

    name = SERVICE_NAME
    admin_methods = frozenset({"Train", "Rollback", "SetThreshold"})

    def __init__(self, settings: TrainerSettings, metrics_registry: CollectorRegistry) -> None:
        self.settings = settings
        self.metrics = TrainerMetrics(metrics_registry)
        self.service: TrainerService | None = None
        self.runner: JobRunner | None = None
        self.policy: AutoTrainer | None = None
        self._clients: list[RemoteService] = []
        self._detectors: DetectorFleet | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def register(self, server: HandlerRegistry) -> None:
        trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(self._started_service), server)

    def _detector_client(self, address: str, certificate_name: str | None) -> DetectorAdminClient:
        """A client of one detector; a replica reached by its address is checked against the
        certificate name of its service."""
        settings = self.settings
        tls = settings.tls()
        options = [("grpc.ssl_target_name_override", certificate_name)] if certificate_name and tls.calls_tls else []
        return DetectorAdminClient(
            address,
            timeout=settings.detector_timeout_seconds,
            token_file=settings.detector_token_file,
            tls=tls,
            options=options,
        )

    def _started_service(self) -> TrainerService:
        if self.service is None:
            raise Unavailable("the trainer is starting")
        return self.service

    async def start(self, readiness: Readiness) -> None:
        settings = self.settings
        settings.datasets_root.mkdir(parents=True, exist_ok=True)
        settings.model_repository.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(runtime.configure, settings.torch_threads)  # process-wide, once
        loop = asyncio.get_running_loop()
        embedder = EmbedderClient(
            settings.embedder,
            timeout=settings.embedder_connect_timeout_seconds,
            wait_for_ready=True,  # training is batch work: wait out an embedder restart
            max_message_bytes=settings.max_message_bytes,
            token_file=settings.embedder_token_file,
            tls=settings.tls(),
        )
        self._clients = [embedder]
        self._detectors = DetectorFleet(settings.detectors, settings.detector_services, self._detector_client)

        history = History(settings.state_dir / "history.jsonl")
        decisions = DecisionBook(settings.state_dir / "decisions")
        backoff = Backoff(settings.retry_backoff_seconds, settings.retry_backoff_max_seconds)
        publisher = Publisher(settings.model_repository)
        announcer = Announcer(history, self.metrics, self._detectors)
        datasets = Datasets(settings.datasets_root, settings.model_repository, self.metrics)
        environment = JobEnvironment(
            publisher=publisher,
            announcer=announcer,
            decisions=decisions,
            history=history,
            metrics=self.metrics,
            checkpoints=CheckpointStore(settings.state_dir / "checkpoints"),
            embedder=EmbedderAccess(
                client=embedder,
                cache=EmbeddingCache(settings.state_dir / "embeddings"),
                connect_timeout=settings.embedder_connect_timeout_seconds,
                batch_timeout=settings.embedder_timeout_seconds,
                batches_in_flight=settings.embedder_batches_in_flight,
            ),
            bridge=LoopBridge(loop),
            tracking=ExperimentTracking(settings.mlflow_tracking_uri),
            digests=datasets.digests,
        )
        board = JobBoard(settings.state_dir / "running", loop)
        self.runner = JobRunner(board, environment, max_concurrent_jobs=settings.max_concurrent_jobs)
        service = TrainerService(
            settings.data_volume, datasets, self.runner, publisher, announcer, history, decisions, backoff
        )
        await asyncio.to_thread(service.recover)
        service.resume_interrupted()  # before the policy looks: a resumed dataset is training
        self.service = service
        self.policy = AutoTrainer(datasets, self.runner, decisions, backoff)
        await self.policy.startup()
        if settings.watch:
            self._tasks.append(asyncio.create_task(self._watch(self.policy), name="oddity-trainer-watch"))
        self._tasks.append(asyncio.create_task(self._scan(self.policy), name="oddity-trainer-scan"))
        await readiness.set(True)

    async def _watch(self, policy: AutoTrainer) -> None:
        """File events under the datasets folder, by dataset folder."""
        # Events carry absolute paths: a relative --data-volume must be resolved to match them.
        root = self.settings.datasets_root.resolve()
        async for changes in awatch(
            root, force_polling=self.settings.force_polling, recursive=True, step=100, rust_timeout=1000
        ):
            names = set()
            for _, path in changes:
                if Path(path).is_relative_to(root) and Path(path).relative_to(root).parts:
                    names.add(Path(path).relative_to(root).parts[0])
            policy.files_changed(names)

    async def _scan(self, policy: AutoTrainer) -> None:
        """The periodic scan: fallback for missed events and the clock of interval datasets."""
        while True:
            await asyncio.sleep(self.settings.scan_interval_seconds)
            try:
                await policy.scan()
            except Exception:
                log.exception("dataset scan failed")
            else:
                self.metrics.scans.inc()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.policy is not None:
            await self.policy.close()
        if self.runner is not None:
            await self.runner.close()
        for client in self._clients:
            await client.close()
        if self._detectors is not None:
            await self._detectors.close()
