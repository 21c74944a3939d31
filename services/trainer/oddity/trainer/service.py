"""The trainer's use cases, free of protobuf: datasets, jobs, auto-training, rollback and
thresholds.

Training runs on worker threads (at most `max_concurrent_jobs` at once) so the gRPC loop
keeps answering. Every step is recorded in the history log. A second Train for a dataset
that is already training is refused (ALREADY_EXISTS, naming the running job); automatic
triggers that arrive meanwhile are remembered and run once the job ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from oddity.common import bundle
from oddity.common.errors import AlreadyExists, InvalidArgument, NotFound
from oddity.common.logging import get_logger
from oddity.trainer import bundle_writer, pipeline
from oddity.trainer.data import DataError, fingerprint, load_dataset
from oddity.trainer.embedded import EmbedderConnection, EmbedderUnavailable, EmbeddingCache, load_embedded_dataset
from oddity.trainer.history import History
from oddity.trainer.jobs import FAILED, RUNNING, SKIPPED, SUCCEEDED, Job, JobBoard, now
from oddity.trainer.learners import LEARNERS
from oddity.trainer.metrics import TrainerMetrics
from oddity.trainer.publisher import Publisher
from oddity.trainer.spec import DatasetSpec, SpecError, load_spec
from oddity.trainer.validation import ValidationFailed

log = get_logger("oddity.trainer")

DATASETS_DIR = "datasets"
STATE_DIR = ".oddity"


class Interrupted(Exception):
    """The trainer is stopping; the job ends here and publishes nothing."""


@dataclass
class DatasetState:
    folder: Path
    spec: DatasetSpec | None = None
    error: str = ""
    last_training_time: datetime | None = None
    last_error: str = ""
    samples: int = 0
    group_samples: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    pending: str = ""  # trigger of a run requested while one was going
    last_interval_run: float = 0.0

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass(frozen=True)
class DatasetStatus:
    dataset: str
    valid: bool
    error: str
    model: str
    kind: str
    training_in_progress: bool
    last_training_time: datetime | None
    policy: str
    auto_enabled: bool
    interval_hours: float
    debounce_seconds: float
    min_samples: int
    samples: int
    group_samples: dict[str, int]
    last_error: str
    live_version: int
    data_fingerprint: str


class TrainerService:
    def __init__(
        self,
        data_volume: Path,
        publisher: Publisher,
        metrics: TrainerMetrics,
        *,
        max_concurrent_jobs: int = 1,
        embedder: str = "127.0.0.1:50051",
    ) -> None:
        self.data_volume = data_volume
        self.embedder_target = embedder
        self.embedding_cache = EmbeddingCache(data_volume / STATE_DIR / "embeddings")
        self.datasets_root = data_volume / DATASETS_DIR
        self.publisher = publisher
        self.metrics = metrics
        self.history = History(data_volume / STATE_DIR / "history.jsonl")
        self.jobs = JobBoard(data_volume / STATE_DIR / "running")
        self._slots = asyncio.Semaphore(max_concurrent_jobs)
        self._datasets: dict[str, DatasetState] = {}
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    @property
    def repository(self) -> Path:
        return self.publisher.repository

    # -- start-up and recovery -------------------------------------------------------------

    def recover(self) -> list[Job]:
        """After a crash: drop half-written versions, report interrupted jobs as failed."""
        removed = bundle_writer.remove_stale_temp_dirs(self.repository)
        if removed:
            log.warning("removed unfinished versions", folders=[str(p) for p in removed])
        interrupted = self.jobs.interrupted()
        for job in interrupted:
            self.history.append(
                "TRAINING_FAILED", job.dataset, job.message, job_id=job.id, reason="interrupted", trigger=job.trigger
            )
            self.metrics.jobs.labels(job.dataset, FAILED).inc()
        return interrupted

    def scan(self) -> list[DatasetState]:
        """(Re)read every dataset spec; returns the datasets whose data changed since the live
        version was trained (by content fingerprint)."""
        names = (
            sorted(p.name for p in self.datasets_root.iterdir() if p.is_dir() and not p.name.startswith("."))
            if self.datasets_root.is_dir()
            else []
        )
        changed = []
        for name in names:
            state = self._datasets.setdefault(name, DatasetState(folder=self.datasets_root / name))
            try:
                state.spec, state.error = load_spec(state.folder), ""
            except SpecError as exc:
                if state.error != str(exc):
                    log.warning("invalid dataset spec", dataset=name, error=str(exc))
                state.spec, state.error = None, str(exc)
                continue
            try:
                state.fingerprint = fingerprint(state.folder, state.spec)
            except OSError as exc:
                state.error = f"cannot read the data: {exc}"
                continue
            if state.fingerprint != self._live_fingerprint(state.spec.name):
                changed.append(state)
        for gone in set(self._datasets) - set(names):
            del self._datasets[gone]
        self.metrics.invalid_datasets.set(sum(1 for s in self._datasets.values() if s.error))
        return changed

    def debounce_seconds(self, dataset: str, default: float = 1.0) -> float:
        state = self._datasets.get(dataset)
        return state.spec.retrain.debounce_seconds if state is not None and state.spec is not None else default

    def _live_fingerprint(self, model: str) -> str:
        """Data fingerprint in the newest version's manifest (only the manifest is read: scans
        run often, and the trainer wrote these versions itself)."""
        for version in reversed(bundle.list_versions(self.repository / model)):
            try:
                return bundle.read_manifest(self.repository / model / str(version)).data_fingerprint
            except bundle.BundleError:
                continue
        return ""

    # -- jobs ------------------------------------------------------------------------------

    async def train(
        self, dataset: str, *, force: bool = False, data_path: str = "", model_kind: str = "", trigger: str = "api"
    ) -> Job:
        await asyncio.to_thread(self.scan)
        state = self._datasets.get(dataset)
        if state is None:
            raise NotFound(f"dataset {dataset!r} not found under {self.datasets_root}")
        if state.spec is None:
            raise InvalidArgument(f"dataset {dataset!r} is invalid: {state.error}")
        override = self._resolve_data_path(data_path) if data_path else None
        if model_kind and model_kind not in LEARNERS:
            raise InvalidArgument(f"unknown model_kind {model_kind!r}; choose one of {sorted(LEARNERS)}")
        if model_kind and bundle.KINDS[model_kind].is_classifier != state.spec.is_classifier:
            raise InvalidArgument(
                f"model_kind {model_kind!r} does not fit dataset {dataset!r} (label: {state.spec.label})"
            )
        running = self.jobs.running_for(dataset)
        if running is not None:
            if trigger != "api":
                state.pending = trigger
                return running
            raise AlreadyExists(f"dataset {dataset!r} is already training (job {running.id}); watch it or retry later")
        job = self.jobs.add(Job(dataset=dataset, trigger=trigger))
        task = asyncio.create_task(self._run(job, state, force, override, model_kind or None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def _resolve_data_path(self, data_path: str) -> Path:
        root = self.data_volume.resolve()
        path = (root / data_path).resolve()
        if not path.is_relative_to(root):
            raise InvalidArgument(f"data_path {data_path!r} resolves outside the data volume")
        if not path.is_file():
            raise InvalidArgument(f"data_path {data_path!r} is not a file in the data volume")
        return path

    async def _run(self, job: Job, state: DatasetState, force: bool, data_path: Path | None, kind: str | None) -> None:
        async with self._slots:
            self.metrics.running.inc()
            try:
                await asyncio.to_thread(self._execute, job, state, force, data_path, kind)
            finally:
                self.metrics.running.dec()
        if state.pending:
            trigger, state.pending = state.pending, ""
            changed = await asyncio.to_thread(self.scan)
            if state in changed:
                await self.train(state.name, trigger=trigger)

    def _execute(self, job: Job, state: DatasetState, force: bool, data_path: Path | None, kind: str | None) -> None:
        """Worker thread: one job from start to end; every outcome is recorded."""
        started = time.perf_counter()
        self.jobs.update(job, state=RUNNING, phase="loading", started_at=now())
        self.jobs.mark_running(job)
        dataset = job.dataset
        details: dict = {"job_id": job.id, "trigger": job.trigger}
        try:
            spec = load_spec(state.folder)
            kind = kind or spec.model.kind
            details.update(model=spec.name, kind=kind)
            self.history.append("TRAINING_STARTED", dataset, f"training {kind} for {dataset}", **details)
            digest = fingerprint(state.folder, spec)
            live = bundle.newest_complete_version(self.repository, spec.name)
            if job.trigger == "interval" and live is not None and live.manifest.data_fingerprint == digest:
                raise pipeline.Skipped(f"data unchanged since version {live.manifest.version}")
            embedding = None
            if spec.is_embedded:
                self._progress(job, "embedding", {})
                connection = EmbedderConnection(self.embedder_target)
                try:
                    data, embedding, stats = load_embedded_dataset(state.folder, spec, connection, self.embedding_cache)
                finally:
                    connection.close()
                details.update(embedding=stats)
            else:
                data = load_dataset(state.folder, spec, data_path)
            state.samples = len(data.features)
            details.update(samples=state.samples, dropped_rows=data.dropped_rows)
            trained = pipeline.train(
                spec,
                data,
                fingerprint=digest,
                force=force,
                kind=kind,
                live=live,
                progress=lambda phase, fields: self._progress(job, phase, fields),
                embedding=embedding,
            )
            state.group_samples = trained.group_samples
            self.jobs.update(job, phase="publishing", group="")
            publish_start = time.perf_counter()
            version = self.publisher.publish(trained.manifest, trained.onnx_files, spec.keep_versions)
            trained.durations["publish"] = time.perf_counter() - publish_start
            duration = time.perf_counter() - started
            details.update(
                metrics=trained.metrics,
                group_samples=trained.group_samples,
                duration_seconds=round(duration, 3),
                phase_seconds={k: round(v, 3) for k, v in trained.durations.items()},
            )
            self.history.append("TRAINING_COMPLETED", dataset, f"trained {kind} on {state.samples} rows", **details)
            self._published(dataset, spec.name, version, job_id=job.id)
            state.last_training_time, state.last_error = now(), ""
            self._finish(
                job,
                SUCCEEDED,
                f"published version {version}",
                started,
                published_version=version,
                metrics=trained.metrics,
            )
        except pipeline.Skipped as exc:
            self.history.append("TRAINING_SKIPPED", dataset, str(exc), reason=str(exc), **details)
            self._finish(job, SKIPPED, str(exc), started)
        except (SpecError, DataError, ValidationFailed, ValueError, Interrupted, EmbedderUnavailable) as exc:
            reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, ValueError) else str(exc)
            state.last_error = reason
            self.history.append("TRAINING_FAILED", dataset, reason, reason=reason, **details)
            self._finish(job, FAILED, reason, started)
        except Exception as exc:  # a bug must not stop the trainer; the live model stays as it is
            log.exception("training crashed", dataset=dataset, job_id=job.id)
            reason = f"internal error: {type(exc).__name__}: {exc}"
            state.last_error = reason
            self.history.append("TRAINING_FAILED", dataset, reason, reason=reason, **details)
            self._finish(job, FAILED, reason, started)

    def _progress(self, job: Job, phase: str, fields: dict) -> None:
        if self._stopping:
            raise Interrupted("interrupted: the trainer is shutting down")
        self.jobs.update(job, phase=phase, **fields)

    def _finish(self, job: Job, outcome: str, message: str, started: float, **fields) -> None:
        self.metrics.jobs.labels(job.dataset, outcome).inc()
        self.metrics.job_seconds.labels(job.dataset).observe(time.perf_counter() - started)
        self.jobs.mark_finished(job)
        self.jobs.update(job, state=outcome, phase="done", message=message, finished_at=now(), **fields)
        log.info("job finished", dataset=job.dataset, job_id=job.id, outcome=outcome, message=message)

    def get_job(self, job_id: str) -> Job:
        job = self.jobs.jobs.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job

    def watch_job(self, job_id: str) -> AsyncIterator[Job]:
        return self.jobs.watch(self.get_job(job_id))

    # -- automatic training ----------------------------------------------------------------

    async def auto_train(self, trigger: str, only: set[str] | None = None) -> None:
        """Start jobs for on_change datasets whose data changed since the live version, and for
        interval datasets whose interval has passed (at start-up: if their data changed)."""
        changed = await asyncio.to_thread(self.scan)
        for state in list(self._datasets.values()):
            spec = state.spec
            if spec is None or (only is not None and state.name not in only):
                continue
            if spec.retrain.policy == "on_change" and state in changed:
                await self._auto_start(state, trigger)
            elif spec.retrain.policy == "interval":
                if state.last_interval_run == 0.0:
                    state.last_interval_run = time.time()
                    if state in changed:
                        await self._auto_start(state, "interval")
                elif time.time() - state.last_interval_run >= spec.retrain.interval_hours * 3600:
                    state.last_interval_run = time.time()
                    await self._auto_start(state, "interval")

    async def _auto_start(self, state: DatasetState, trigger: str) -> None:
        try:
            await self.train(state.name, trigger=trigger)
        except (NotFound, InvalidArgument) as exc:
            log.warning("automatic training not started", dataset=state.name, error=exc.message)

    # -- status, history, rollback, thresholds -----------------------------------------------

    async def statuses(self, dataset: str = "") -> list[DatasetStatus]:
        await asyncio.to_thread(self.scan)  # fingerprints read files: off the event loop
        if dataset and dataset not in self._datasets:
            raise NotFound(f"dataset {dataset!r} not found")
        names = [dataset] if dataset else sorted(self._datasets)
        return [self._status(self._datasets[n]) for n in names]

    def _status(self, state: DatasetState) -> DatasetStatus:
        spec = state.spec
        model = spec.name if spec else state.name
        versions = bundle.list_versions(self.repository / model)
        return DatasetStatus(
            dataset=state.name,
            valid=spec is not None,
            error=state.error,
            model=model,
            kind=spec.model.kind if spec else "",
            training_in_progress=self.jobs.running_for(state.name) is not None,
            last_training_time=state.last_training_time,
            policy=spec.retrain.policy if spec else "",
            auto_enabled=bool(spec and spec.retrain.policy != "manual"),
            interval_hours=spec.retrain.interval_hours if spec else 0.0,
            debounce_seconds=spec.retrain.debounce_seconds if spec else 0.0,
            min_samples=spec.min_samples if spec else 0,
            samples=state.samples,
            group_samples=state.group_samples,
            last_error=state.last_error,
            live_version=versions[-1] if versions else 0,
            data_fingerprint=state.fingerprint,
        )

    def _spec(self, dataset: str) -> DatasetSpec:
        self.scan()
        state = self._datasets.get(dataset)
        if state is None:
            raise NotFound(f"dataset {dataset!r} not found")
        if state.spec is None:
            raise InvalidArgument(f"dataset {dataset!r} is invalid: {state.error}")
        return state.spec

    def _published(self, dataset: str, model: str, version: int, **details) -> None:
        self.history.append(
            "PUBLISHED", dataset, f"published {model} version {version}", version=version, model=model, **details
        )
        self.metrics.live_version.labels(dataset).set(version)

    async def rollback(self, dataset: str, version: int) -> tuple[int, int]:
        spec = await asyncio.to_thread(self._spec, dataset)
        new, restored = await asyncio.to_thread(self.publisher.rollback, spec.name, version, spec.keep_versions)
        self.history.append(
            "ROLLED_BACK",
            dataset,
            f"version {restored} of {spec.name} serves again as version {new}",
            version=new,
            restored_from=restored,
            model=spec.name,
        )
        self._published(dataset, spec.name, new, reason="rollback")
        return new, restored

    async def set_threshold(self, dataset: str, percentile: float) -> int:
        spec = await asyncio.to_thread(self._spec, dataset)
        version, thresholds = await asyncio.to_thread(
            self.publisher.set_threshold, spec.name, percentile, spec.keep_versions
        )
        self.history.append(
            "THRESHOLD_CHANGED",
            dataset,
            f"threshold of {spec.name} moved to percentile {percentile:g}",
            version=version,
            percentile=percentile,
            thresholds=thresholds,
            model=spec.name,
        )
        self._published(dataset, spec.name, version, reason="threshold")
        return version

    async def close(self) -> None:
        """Stop: running jobs end at their next progress report (recorded as failed)."""
        self._stopping = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
