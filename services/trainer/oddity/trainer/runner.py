"""The job runner: runs one training job on a worker thread from loading the data to
publishing the version (its models and similarity index together), at most
`max_concurrent_jobs` at once, so the gRPC loop keeps answering.

Every outcome is recorded: TRAINING_STARTED, then TRAINING_COMPLETED (and PUBLISHED),
TRAINING_SKIPPED or TRAINING_FAILED in the history; the outcome metric; the job's
experiment-tracking run (tracking.py); a crash record while the job runs. At the next start a
job that left checkpoints (kinds that train in epochs) resumes from its last one under the same
job id (at most MAX_RESUMES times); any other is reported as an interrupted (failed) job. A
failed job never touches the live model. When the trainer stops, running jobs end at their
next step.

Reason to change: how a job runs and what its outcomes record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from oddity.common import bundle
from oddity.common.clients import EmbedderClient
from oddity.common.errors import OddityError
from oddity.common.logging import get_logger
from oddity.trainer import index_items, pipeline
from oddity.trainer.announcer import Announcer
from oddity.trainer.checkpoints import CheckpointStore
from oddity.trainer.data import DataError, fingerprint, load_dataset
from oddity.trainer.decisions import DecisionBook
from oddity.trainer.embedding_cache import EmbeddingCache
from oddity.trainer.history import History
from oddity.trainer.index_items import IndexBuildFailed
from oddity.trainer.item_datasets import load_item_dataset
from oddity.trainer.job_embedder import JobEmbedder
from oddity.trainer.jobs import FAILED, RUNNING, SKIPPED, SUCCEEDED, Job, JobBoard, now
from oddity.trainer.loop_calls import Interrupted, LoopBridge
from oddity.trainer.metrics import REJECTED, TrainerMetrics
from oddity.trainer.publisher import Publisher
from oddity.trainer.spec import DatasetSpec, SpecError, load_spec
from oddity.trainer.tracking import NO_TRACKING, ExperimentTracking, JobTracking
from oddity.trainer.validation import ValidationFailed

log = get_logger("oddity.trainer.runner")


class RepositoryUnwritable(Exception):
    """The model repository cannot take a new version (read-only, full, gone): one line, no traceback."""


# How many of the history's newest successful runs are read back at start: a dataset whose
# last success is older than that many successes (of all datasets) starts without one.
RESTORED_SUCCESSES = 10_000

# Expected failures: recorded with their message, no traceback.
EXPECTED_FAILURES = (
    SpecError,
    DataError,
    ValidationFailed,
    ValueError,
    Interrupted,
    OddityError,
    RepositoryUnwritable,
    IndexBuildFailed,
)

# A job killed this many times in a row is not resumed again (it may be what kills the trainer).
MAX_RESUMES = 3


@dataclass(frozen=True)
class Resume:
    """A job that goes on after a restart: its id, how often it resumed, its tracking run."""

    job_id: str
    resumes: int
    tracking_run_id: str = ""


@dataclass(frozen=True)
class JobRequest:
    """What to run: the dataset, what started it, and the Train request's overrides."""

    dataset: str
    folder: Path
    trigger: str  # api, file_change, scan, interval, startup
    force: bool = False
    data_path: Path | None = None
    model_kind: str | None = None
    resume: Resume | None = None

    def record(self) -> dict[str, Any]:
        """What the crash record keeps to run this request again."""
        return {
            "folder": str(self.folder),
            "force": self.force,
            "data_path": str(self.data_path) if self.data_path is not None else "",
            "model_kind": self.model_kind or "",
            "resumes": self.resume.resumes if self.resume is not None else 0,
            "tracking_run_id": self.resume.tracking_run_id if self.resume is not None else "",
        }

    @classmethod
    def resumed(cls, job: Job, record: dict[str, Any]) -> JobRequest:
        """The request of an interrupted job, from its crash record, to run it again."""
        return cls(
            dataset=job.dataset,
            folder=Path(record["folder"]),
            trigger=job.trigger,
            force=bool(record.get("force", False)),
            data_path=Path(record["data_path"]) if record.get("data_path") else None,
            model_kind=record.get("model_kind") or None,
            resume=Resume(job.id, int(record.get("resumes", 0)) + 1, str(record.get("tracking_run_id", ""))),
        )


@dataclass(frozen=True)
class LastRun:
    """What the latest jobs of a dataset found (shown by GetStatus)."""

    trained_at: datetime | None = None  # last successful run
    error: str = ""  # reason of the last failure, cleared by a success
    samples: int = 0
    group_samples: dict[str, int] = field(default_factory=dict)
    failures: int = 0  # failed runs in a row (a Train request starts counting again)
    failed_at: float = 0.0  # time.time() of the last failure
    failed_fingerprint: str = ""  # the data and spec that failed: a change of either ends the backoff


@dataclass(frozen=True)
class EmbedderAccess:
    """The embedder for image and text datasets, and how long a job waits for it."""

    client: EmbedderClient
    cache: EmbeddingCache
    connect_timeout: float
    batch_timeout: float


class JobRunner:
    def __init__(
        self,
        board: JobBoard,
        publisher: Publisher,
        announcer: Announcer,
        history: History,
        metrics: TrainerMetrics,
        bridge: LoopBridge,
        embedder: EmbedderAccess,
        decisions: DecisionBook,
        *,
        checkpoints: CheckpointStore,
        tracking: ExperimentTracking | None = None,
        max_concurrent_jobs: int = 1,
    ) -> None:
        self.board = board
        self.publisher = publisher
        self.announcer = announcer
        self.history = history
        self.metrics = metrics
        self.bridge = bridge
        self.embedder = embedder
        self.decisions = decisions
        self.checkpoints = checkpoints
        self.tracking = tracking or ExperimentTracking(None)
        self._slots = asyncio.Semaphore(max_concurrent_jobs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_runs: dict[str, LastRun] = {}
        self._to_resume: list[JobRequest] = []

    def job(self, job_id: str) -> Job | None:
        return self.board.get(job_id)

    def watch(self, job_id: str) -> AsyncIterator[Job]:
        return self.board.watch(job_id)

    def running_for(self, dataset: str) -> Job | None:
        return self.board.running_for(dataset)

    def last_run(self, dataset: str) -> LastRun:
        return self._last_runs.get(dataset, LastRun())

    def recover(self) -> list[Job]:
        """At start: each dataset's last successful run as the history tells it (so GetStatus
        and its metric survive a restart), and the jobs a killed trainer left running: those
        with checkpoints are kept for `resume_interrupted`, the others reported as failed
        (interrupted) and returned."""
        for event in self.history.read(event_types=("TRAINING_COMPLETED",), limit=RESTORED_SUCCESSES):
            try:
                dataset, at = str(event["dataset"]), datetime.fromisoformat(event["timestamp"])
            except (KeyError, TypeError, ValueError):
                continue
            self._last_runs[dataset] = replace(self.last_run(dataset), trained_at=at)  # oldest first: newest wins
            self.metrics.last_success.labels(dataset).set(at.timestamp())
        failed = []
        for job, record in self.board.interrupted():
            resumes = record.get("resumes", 0) if isinstance(record.get("resumes", 0), int) else MAX_RESUMES
            if self.checkpoints.has(job.id) and isinstance(record.get("folder"), str) and resumes < MAX_RESUMES:
                self._to_resume.append(JobRequest.resumed(job, record))
                continue
            reason = "interrupted" if resumes < MAX_RESUMES else f"interrupted {resumes + 1} times; not resumed again"
            self.history.append(
                "TRAINING_FAILED", job.dataset, job.message, job_id=job.id, reason=reason, trigger=job.trigger
            )
            self.metrics.jobs.labels(job.dataset, FAILED).inc()
            failed.append(self.board.add(job))
        self.checkpoints.remove_all_but({r.resume.job_id for r in self._to_resume if r.resume is not None})
        return failed

    def resume_interrupted(self) -> list[Job]:
        """Queue the jobs `recover` found with checkpoints (on the event loop), under their ids."""
        requests, self._to_resume = self._to_resume, []
        return [self.submit(request) for request in requests]

    def submit(self, request: JobRequest) -> Job:
        """Queue a job (on the event loop); it runs when a slot is free."""
        job = Job(dataset=request.dataset, trigger=request.trigger)
        if request.resume is not None:  # the same job, so its watchers and GetJob follow it on
            job = replace(job, id=request.resume.job_id)
            # Recorded while it waits for a slot too: a trainer killed again still finds it.
            self.board.mark_running(job, **request.record())
        self.board.add(job)
        task = asyncio.create_task(self._run(job.id, request), name=f"oddity-job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(job.id, None))
        return job

    async def wait(self, job_id: str) -> None:
        """Until the job has ended (its outcome recorded)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.shield(task)

    async def close(self) -> None:
        """Stop: running jobs end at their next step (recorded as failed)."""
        self.bridge.stop()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, job_id: str, request: JobRequest) -> None:
        async with self._slots:
            self.metrics.running.inc()
            try:
                await asyncio.to_thread(self._execute, job_id, request)
            finally:
                self.metrics.running.dec()

    def _execute(self, job_id: str, request: JobRequest) -> None:
        """Worker thread: one job from start to end; every outcome is recorded."""
        started = time.perf_counter()
        job = self.board.update(job_id, state=RUNNING, phase="loading", started_at=now())
        self.board.mark_running(job, **request.record())
        dataset = request.dataset
        details: dict[str, Any] = {"job_id": job_id, "trigger": request.trigger}
        if request.resume is not None:
            details["resumes"] = request.resume.resumes
        run = self.last_run(dataset)
        if request.trigger == "api" and request.resume is None:  # an operator asked: what failed before starts over
            run = self._remember(dataset, replace(run, failures=0))
        digest = ""
        tracker = NO_TRACKING
        try:
            self.bridge.check()
            spec = load_spec(request.folder)
            decided = self.decisions.get(dataset)
            if decided.threshold_percentile:  # an operator's SetThreshold outlives retraining
                spec = with_threshold_override(spec, decided.threshold_percentile)
                details["threshold_override"] = decided.threshold_percentile
            kind = request.model_kind or spec.model.kind
            details.update(model=spec.name, kind=kind)
            doing = "resuming" if request.resume is not None else "training"
            self.history.append("TRAINING_STARTED", dataset, f"{doing} {kind} for {dataset}", **details)
            tracker = self._track(job, request, spec, kind)
            digest = fingerprint(request.folder, spec)
            live = bundle.newest_complete_version(self.publisher.repository, spec.name)
            live_number = live.manifest.version if live is not None else 0
            unchanged = live is not None and live.manifest.data_fingerprint == digest and not request.data_path
            if unchanged and request.trigger == "interval":
                raise pipeline.Skipped(f"data unchanged since version {live_number}")
            if unchanged and request.trigger == "api" and not request.force and not request.model_kind:
                raise pipeline.Skipped(
                    f"data and spec unchanged since version {live_number}; Train with force to train again"
                )
            again = f" (data and spec unchanged since version {live_number})" if unchanged else ""
            embedding = None
            embedder = self._job_embedder(job_id)
            if spec.is_embedded:
                self._progress(job_id, "embedding", {})
                data, embedding, stats = load_item_dataset(request.folder, spec, embedder, self.embedder.cache)
                details.update(embedding=stats)
            else:
                data = load_dataset(request.folder, spec, request.data_path)
            # Before training: a bad id column or text model fails the job at once.
            index_plan = index_items.plan_index(spec, data, embedding)
            if index_plan is not None:
                index_items.choose_text_model(index_plan, embedder)
            run = self._remember(dataset, replace(run, samples=len(data.features)))
            self.metrics.last_run_rows.labels(dataset).set(len(data.features))
            details.update(samples=len(data.features), dropped_rows=data.dropped_rows)
            tracker.log_params(
                {
                    "kind": kind,
                    **{f"params.{k}": v for k, v in spec.model.params.items()},
                    "label": spec.label or "",
                    "score_column": spec.score_column or "",
                    "features": len(data.feature_names),
                    "samples": len(data.features),
                    "holdout_fraction": spec.validation.holdout_fraction,
                    "data_fingerprint": digest,
                }
            )
            trained = pipeline.train(
                spec,
                data,
                fingerprint=digest,
                force=request.force,
                kind=kind,
                live=live,
                progress=lambda phase, fields: self._progress(job_id, phase, fields, tracker),
                embedding=embedding,
                checkpoints=self.checkpoints.job(job_id),
            )
            run = self._remember(dataset, replace(run, group_samples=trained.group_samples))
            files = dict(trained.onnx_files)
            if index_plan is not None:
                self._progress(job_id, "indexing", {"group": ""})
                index_start = time.perf_counter()
                indexed = index_items.build(index_plan, embedder, self.embedder.cache, spec.embedder.batch_size)
                trained.durations["index"] = time.perf_counter() - index_start
                trained.manifest.similarity.CopyFrom(indexed.built.index)
                files.update(indexed.built.files)
                details.update(index=indexed.figures())
            tracker.log_metrics(trained.metrics)
            tracker.log_model(trained.onnx_files, bundle.manifest_to_json(trained.manifest))
            self._progress(job_id, "publishing", {"group": ""})
            pinned = self.decisions.get(dataset).pin
            if pinned is not None and request.trigger not in ("api", "data_changed_after_rollback"):
                # A Rollback came while this run trained on the data it rolled away from.
                raise pipeline.Skipped(f"a rollback to version {pinned.restored_from} holds; this run is not published")
            publish_start = time.perf_counter()
            try:
                version = self.publisher.publish(trained.manifest, files, spec.keep_versions)
            except OSError as exc:  # read-only, full or missing volume: the operator's to fix
                raise RepositoryUnwritable(
                    f"cannot write to the model repository {self.publisher.repository}: "
                    f"{exc.strerror or type(exc).__name__}"
                ) from exc
            trained.durations["publish"] = time.perf_counter() - publish_start
            details.update(
                metrics=trained.metrics,
                group_samples=trained.group_samples,
                duration_seconds=round(time.perf_counter() - started, 3),
                phase_seconds={k: round(v, 3) for k, v in trained.durations.items()},
            )
            if trained.epochs:  # every epoch's figures, per group: what MLflow would show
                details["epochs"] = trained.epochs
            if trained.resumed_from_epoch:
                details["resumed_from_epoch"] = trained.resumed_from_epoch
            self.history.append(
                "TRAINING_COMPLETED", dataset, f"trained {kind} on {len(data.features)} rows", **details
            )
            if pinned is not None:  # a new version replaces the rolled-back one
                self.decisions.unpin(dataset)
            self.announcer.record(dataset, spec.name, version, job_id=job_id)
            trained.manifest.version = version
            tracker.set_tags({"oddity.version": str(version)})
            self.metrics.live(dataset, trained.manifest)
            # Published: from here on the job succeeds, even if the trainer is stopping.
            self.bridge.call(self.announcer.notify(spec.name, request_id=job_id), interruptible=False)
            finished = now()
            self._remember(dataset, replace(run, trained_at=finished, error="", failures=0))
            self.metrics.last_success.labels(dataset).set(finished.timestamp())
            self._finish(
                job_id,
                dataset,
                SUCCEEDED,
                f"published version {version}{again}",
                started,
                published_version=version,
                metrics=trained.metrics,
            )
        except pipeline.Skipped as exc:
            self.history.append("TRAINING_SKIPPED", dataset, str(exc), reason=str(exc), **details)
            self._remember(dataset, replace(self.last_run(dataset), failures=0))
            tracker.set_tags({"oddity.outcome": SKIPPED, "oddity.message": str(exc)})
            self._finish(job_id, dataset, SKIPPED, str(exc), started)
        except EXPECTED_FAILURES as exc:
            if isinstance(exc, OddityError):
                reason = exc.message
            elif isinstance(exc, ValueError):
                reason = f"{type(exc).__name__}: {exc}"
            else:
                reason = str(exc)
            outcome = REJECTED if isinstance(exc, ValidationFailed) else FAILED
            tracker.set_tags({"oddity.outcome": outcome, "oddity.message": reason})
            self._fail(job_id, dataset, reason, details, started, digest, outcome)
        except Exception as exc:  # a bug must not stop the trainer; the live model stays as it is
            log.exception("training crashed", dataset=dataset, job_id=job_id)
            self._fail(job_id, dataset, f"internal error: {type(exc).__name__}: {exc}", details, started, digest)
        finally:
            job = self.board.get(job_id) or job
            tracker.finish("FINISHED" if job.state in (SUCCEEDED, SKIPPED) else "FAILED")

    def _job_embedder(self, job_id: str) -> JobEmbedder:
        """The job's view of the embedder (it connects on the first call, if any)."""
        return JobEmbedder(
            self.embedder.client,
            self.bridge,
            request_id=job_id,
            connect_timeout=self.embedder.connect_timeout,
            batch_timeout=self.embedder.batch_timeout,
        )

    def _track(self, job: Job, request: JobRequest, spec: DatasetSpec, kind: str) -> JobTracking:
        """The job's tracking run (the same run again for a resumed job), kept in the crash record."""
        tracker = self.tracking.start(
            model=spec.name,
            dataset=job.dataset,
            job_id=job.id,
            tags={
                "oddity.dataset": job.dataset,
                "oddity.job_id": job.id,
                "oddity.kind": kind,
                "oddity.trigger": job.trigger,
            },
            run_id=request.resume.tracking_run_id if request.resume is not None else "",
        )
        if tracker.active:
            self.board.mark_running(job, **{**request.record(), "tracking_run_id": tracker.run_id})
            if request.resume is not None:
                tracker.set_tags({"oddity.resumes": str(request.resume.resumes)})
        return tracker

    def _remember(self, dataset: str, run: LastRun) -> LastRun:
        self._last_runs[dataset] = run
        self.metrics.consecutive_failures.labels(dataset).set(run.failures)
        return run

    def _progress(self, job_id: str, phase: str, fields: dict[str, Any], tracker: JobTracking = NO_TRACKING) -> None:
        self.bridge.check()
        self.board.update(job_id, phase=phase, **fields)
        if "epoch_metrics" in fields:
            figures = {
                "loss": fields["loss"],
                "train_loss": fields["train_loss"],
                "validation_loss": fields["validation_loss"],
                **fields["epoch_metrics"],
            }
            tracker.log_epoch(fields.get("group", ""), int(fields["epoch"]), figures)

    def _fail(
        self,
        job_id: str,
        dataset: str,
        reason: str,
        details: dict[str, Any],
        started: float,
        digest: str,
        outcome: str = FAILED,
    ) -> None:
        previous = self.last_run(dataset)
        self._remember(
            dataset,
            replace(
                previous, error=reason, failures=previous.failures + 1, failed_at=time.time(), failed_fingerprint=digest
            ),
        )
        self.history.append("TRAINING_FAILED", dataset, reason, reason=reason, **details)
        self._finish(job_id, dataset, FAILED, reason, started, outcome=outcome)

    def _finish(
        self,
        job_id: str,
        dataset: str,
        state: str,
        message: str,
        started: float,
        *,
        outcome: str = "",
        **fields: Any,
    ) -> None:
        """End the job in `state`; its metrics count it under `outcome` (the state unless the
        validation gate refused the model: rejected)."""
        outcome = outcome or state
        self.board.mark_finished(job_id)
        self.checkpoints.remove(job_id)  # a job that ended never resumes
        self.metrics.jobs.labels(dataset, outcome).inc()
        self.metrics.job_seconds.labels(dataset, outcome).observe(time.perf_counter() - started)
        # Last: a watcher that sees the job done also sees its history and metrics.
        self.board.update(job_id, state=state, phase="done", message=message, finished_at=now(), **fields)
        log.info("job finished", dataset=dataset, job_id=job_id, outcome=state, message=message)


def with_threshold_override(spec: DatasetSpec, percentile: float) -> DatasetSpec:
    """The spec with an operator's threshold percentile. The gate's anomaly-rate bounds were set
    around the spec's own percentile, so they move with it: bounds of [1%, 10%] at p95 (5%
    expected) become [4%, 40%] at p80 (20% expected)."""
    factor = (1 - percentile / 100) / (1 - spec.threshold_percentile / 100)
    low, high = spec.validation.anomaly_rate
    validation = spec.validation.model_copy(update={"anomaly_rate": (min(1.0, low * factor), min(1.0, high * factor))})
    return spec.model_copy(update={"threshold_percentile": percentile, "validation": validation})
