"""The job runner: runs one training job on a worker thread, at most `max_concurrent_jobs` at
once, so the gRPC loop keeps answering. A job goes through its stages (job_stages.py): plan →
load → train (+ index) → publish; the skip rules (skip_rules.py) are asked between them, and
every outcome is recorded (job_records.py) — a failed job never touches the live model.

At the next start a job that left checkpoints (kinds that train in epochs) resumes from its
last one under the same job id (at most MAX_RESUMES times); any other is reported as an
interrupted (failed) job. A job runs within its limits (job_control.py): when the trainer stops
it ends at its next check (a chunk of a long step) and is recorded as stopped; past
`training.time_budget_seconds` it fails, saying so. Either way nothing is published.

Reason to change: in which order a job's stages run and how a job is queued, resumed and stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from oddity.common import bundle
from oddity.common.clients import EmbedderClient
from oddity.common.errors import OddityError
from oddity.common.logging import get_logger
from oddity.trainer import job_control, job_stages, pipeline, runtime
from oddity.trainer.announcer import Announcer
from oddity.trainer.checkpoints import CheckpointStore
from oddity.trainer.data import DataError, FileDigests
from oddity.trainer.decisions import DecisionBook
from oddity.trainer.embedding_cache import EmbeddingCache
from oddity.trainer.history import History
from oddity.trainer.index_items import IndexBuildFailed, IndexPlan
from oddity.trainer.job_control import JobLimits, Stopped, TimeBudgetSpent
from oddity.trainer.job_embedder import JobEmbedder
from oddity.trainer.job_records import JobRecord, JobRecords, LastRun
from oddity.trainer.job_stages import Baseline, Built, Loaded, Plan, RepositoryUnwritable
from oddity.trainer.jobs import FAILED, SKIPPED, SUCCEEDED, Job, JobBoard, JobRequest
from oddity.trainer.loop_calls import LoopBridge
from oddity.trainer.metrics import REJECTED, TrainerMetrics
from oddity.trainer.publisher import Publisher
from oddity.trainer.skip_rules import JobFacts, skip_reason
from oddity.trainer.spec import SpecError
from oddity.trainer.tracking import ExperimentTracking, JobTracking
from oddity.trainer.validation import ValidationFailed

log = get_logger("oddity.trainer.runner")

# Expected failures: recorded with their message, no traceback.
EXPECTED_FAILURES = (
    SpecError,
    DataError,
    ValidationFailed,
    ValueError,
    TimeBudgetSpent,
    OddityError,
    RepositoryUnwritable,
    IndexBuildFailed,
)

# A job killed this many times in a row is not resumed again (it may be what kills the trainer).
MAX_RESUMES = 3


@dataclass(frozen=True)
class EmbedderAccess:
    """The embedder for image and text datasets, and how long a job waits for it."""

    client: EmbedderClient
    cache: EmbeddingCache
    connect_timeout: float
    batch_timeout: float
    batches_in_flight: int = 1  # embed calls a job keeps going at once


@dataclass(frozen=True)
class JobEnvironment:
    """What every job works with, built once at start: where versions go and who hears of
    them, what operators decided, the embedder, where outcomes are recorded, the event loop
    (for calls to other services, and to stop jobs)."""

    publisher: Publisher
    announcer: Announcer
    decisions: DecisionBook
    history: History
    metrics: TrainerMetrics
    checkpoints: CheckpointStore
    embedder: EmbedderAccess
    bridge: LoopBridge
    tracking: ExperimentTracking = field(default_factory=lambda: ExperimentTracking(None))
    # The files' digests the scans keep: a job rehashes only what changed since the last scan.
    digests: FileDigests = field(default_factory=FileDigests)


@dataclass(frozen=True)
class RunningJob:
    """One job on its worker thread: its request, what is recorded of it so far, its view of
    the embedder, how its stages report progress, and its limits (the stop, the time budget)."""

    request: JobRequest
    record: JobRecord
    embedder: JobEmbedder
    progress: job_stages.Progress
    limits: JobLimits


class JobRunner:
    def __init__(self, board: JobBoard, env: JobEnvironment, *, max_concurrent_jobs: int = 1) -> None:
        self.board = board
        self.env = env
        self.records = JobRecords(board, env.history, env.metrics, env.checkpoints)
        self._slots = asyncio.Semaphore(max_concurrent_jobs)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._to_resume: list[JobRequest] = []

    def job(self, job_id: str) -> Job | None:
        return self.board.get(job_id)

    def watch(self, job_id: str) -> AsyncIterator[Job]:
        return self.board.watch(job_id)

    def running_for(self, dataset: str) -> Job | None:
        return self.board.running_for(dataset)

    def last_run(self, dataset: str) -> LastRun:
        return self.records.last_run(dataset)

    def recover(self) -> list[Job]:
        """At start: each dataset's last successful run as the history tells it (so GetStatus
        and its metric survive a restart), and the jobs a killed trainer left running: those
        with checkpoints are kept for `resume_interrupted`, the others reported as failed
        (interrupted) and returned."""
        self.records.restore()
        failed = []
        for job, record in self.board.interrupted():
            resumes = record.get("resumes", 0) if isinstance(record.get("resumes", 0), int) else MAX_RESUMES
            if self.env.checkpoints.has(job.id) and isinstance(record.get("folder"), str) and resumes < MAX_RESUMES:
                self._to_resume.append(JobRequest.resumed(job, record))
                continue
            reason = "interrupted" if resumes < MAX_RESUMES else f"interrupted {resumes + 1} times; not resumed again"
            failed.append(self.records.interrupted(job, reason))
        self.env.checkpoints.remove_all_but({r.resume.job_id for r in self._to_resume if r.resume is not None})
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

    def stop_jobs(self) -> None:
        """Running jobs end at their next check (recorded as stopped); queued ones as they start."""
        self.env.bridge.stop()

    async def close(self) -> None:
        """Stop the jobs and wait until each has recorded its end."""
        self.stop_jobs()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, job_id: str, request: JobRequest) -> None:
        async with self._slots:
            self.env.metrics.running.inc()
            try:
                await asyncio.to_thread(self._execute, job_id, request)
            finally:
                self.env.metrics.running.dec()

    def _execute(self, job_id: str, request: JobRequest) -> None:
        """Worker thread: one job through its stages, within its limits; whatever happens is recorded."""
        limits = JobLimits(self.env.bridge.check)
        runtime.wait_prewarmed()
        with job_control.running(limits):
            self._run_stages(job_id, request, limits)

    def _run_stages(self, job_id: str, request: JobRequest, limits: JobLimits) -> None:
        record = self.records.begin(job_id, request)
        job = RunningJob(request, record, self._job_embedder(job_id), self._progress(record, limits), limits)
        try:
            planned, baseline = self._plan(job)
            loaded, index_plan = self._load(job, planned, baseline)
            built = self._train(job, planned, baseline, loaded, index_plan)
            self._publish(job, planned, baseline, loaded, built)
        except pipeline.Skipped as exc:
            self.records.skipped(record, str(exc))
        except Stopped as exc:
            self.records.stopped(record, str(exc))
        except EXPECTED_FAILURES as exc:
            outcome = REJECTED if isinstance(exc, ValidationFailed) else FAILED
            record.tracker.set_tags({"oddity.outcome": outcome, "oddity.message": failure_reason(exc)})
            self.records.failed(record, failure_reason(exc), outcome)
        except Exception as exc:  # a bug must not stop the trainer; the live model stays as it is
            log.exception("training crashed", dataset=request.dataset, job_id=job_id)
            self.records.failed(record, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            ended = self.board.get(job_id)
            record.tracker.finish("FINISHED" if ended is not None and ended.state in (SUCCEEDED, SKIPPED) else "FAILED")

    def _plan(self, job: RunningJob) -> tuple[Plan, Baseline]:
        """Stage 1: the spec and kind (the job starts, with its tracking run), then the data
        against the live version; unchanged data may end the job here."""
        request, record = job.request, job.record
        job.limits.check()
        planned = job_stages.plan(request, self.env.decisions.get(request.dataset))
        job.limits.set_budget(planned.spec.training.time_budget_seconds)  # counted from the job's start
        record.details.update(planned.details())
        doing = "resuming" if request.resume is not None else "training"
        self.records.started(record, f"{doing} {planned.kind} for {request.dataset}")
        record.tracker = self._track(request, record.job_id, planned)
        baseline = job_stages.baseline(request.folder, planned.spec, self.env.publisher.repository, self.env.digests)
        record.fingerprint = baseline.fingerprint
        skip_unless_go(facts(request, planned, baseline))
        return planned, baseline

    def _load(self, job: RunningJob, planned: Plan, baseline: Baseline) -> tuple[Loaded, IndexPlan | None]:
        """Stage 2: the rows and the plan of their index; too few rows end the job here."""
        record, spec = job.record, planned.spec
        loaded = job_stages.load(job.request, spec, job.embedder, self.env.embedder.cache, job.progress)
        if loaded.embedding_stats is not None:
            record.details.update(embedding=loaded.embedding_stats)
        index_plan = job_stages.plan_index(spec, loaded, job.embedder)
        self.records.loaded(record, loaded.data)
        record.tracker.log_params(job_stages.tracked_params(planned, loaded, baseline))
        skip_unless_go(facts(job.request, planned, baseline, rows=len(loaded.data.features)))
        return loaded, index_plan

    def _train(
        self, job: RunningJob, planned: Plan, baseline: Baseline, loaded: Loaded, index_plan: IndexPlan | None
    ) -> Built:
        """Stage 3: the model, then its similarity index."""
        record = job.record
        checkpoints = self.env.checkpoints.job(record.job_id)
        built = job_stages.train(
            planned, baseline, loaded, force=job.request.force, progress=job.progress, checkpoints=checkpoints
        )
        self.records.trained(record, built.trained.group_samples)
        if index_plan is not None:
            cache, batch_size = self.env.embedder.cache, planned.spec.embedder.batch_size
            built = job_stages.build_index(built, index_plan, job.embedder, cache, batch_size, job.progress)
            record.details.update(index=built.index_figures)
        record.tracker.log_metrics(built.trained.metrics)
        record.tracker.log_model(built.trained.onnx_files, bundle.manifest_to_json(built.trained.manifest))
        return built

    def _publish(self, job: RunningJob, planned: Plan, baseline: Baseline, loaded: Loaded, built: Built) -> None:
        """Stage 4: unless a rollback came while the job trained, write the version and tell
        the detectors at once (the history and tracking are written while they load it); from
        then on the job succeeds, even if the trainer is stopping."""
        request, record, spec = job.request, job.record, planned.spec
        job.limits.check()  # the last moment a stop (Ctrl-C, SIGTERM) ends the job unpublished
        job.progress("publishing", {"group": ""})
        pin = self.env.decisions.get(request.dataset).pin
        rows = len(loaded.data.features)
        holds = pin.restored_from if pin is not None else None
        skip_unless_go(facts(request, planned, baseline, rows=rows, rollback_holds=holds))
        version = job_stages.publish(self.env.publisher, built, spec.keep_versions)
        announced = self.env.bridge.begin(self.env.announcer.notify(spec.name, request_id=record.job_id))
        record.details.update(job_stages.completed_details(built, record.started))
        self.records.completed(record, f"trained {planned.kind} on {rows} rows")
        if pin is not None:  # a new version replaces the rolled-back one
            self.env.decisions.unpin(request.dataset)
        self.env.announcer.record(request.dataset, spec.name, version, job_id=record.job_id)
        built.trained.manifest.version = version
        record.tracker.set_tags({"oddity.version": str(version)})
        self.env.metrics.live(request.dataset, built.trained.manifest)
        announced.result()  # the job ends once every detector has answered, as before
        unchanged = facts(request, planned, baseline).unchanged_since
        again = f" (data and spec unchanged since version {unchanged})" if unchanged else ""
        self.records.succeeded(record, f"published version {version}{again}", version, built.trained.metrics)

    def _job_embedder(self, job_id: str) -> JobEmbedder:
        """The job's view of the embedder (it connects on the first call, if any)."""
        embedder = self.env.embedder
        return JobEmbedder(
            embedder.client,
            self.env.bridge,
            request_id=job_id,
            connect_timeout=embedder.connect_timeout,
            batch_timeout=embedder.batch_timeout,
            batches_in_flight=embedder.batches_in_flight,
        )

    def _track(self, request: JobRequest, job_id: str, planned: Plan) -> JobTracking:
        """The job's tracking run (the same run again for a resumed job), kept in the crash record."""
        tracker = self.env.tracking.start(
            model=planned.spec.name,
            dataset=request.dataset,
            job_id=job_id,
            tags={
                "oddity.dataset": request.dataset,
                "oddity.job_id": job_id,
                "oddity.kind": planned.kind,
                "oddity.trigger": request.trigger,
            },
            run_id=request.resume.tracking_run_id if request.resume is not None else "",
        )
        if tracker.active:
            job = self.board.get(job_id)
            if job is not None:
                self.board.mark_running(job, **{**request.record(), "tracking_run_id": tracker.run_id})
            if request.resume is not None:
                tracker.set_tags({"oddity.resumes": str(request.resume.resumes)})
        return tracker

    def _progress(self, record: JobRecord, limits: JobLimits) -> job_stages.Progress:
        """How the job's stages report their phase (and each epoch's figures to tracking);
        each report checks the job's limits too."""

        def report(phase: str, fields: dict[str, Any]) -> None:
            group = fields.get("group")
            limits.phase = f"{phase} (group {group})" if group else phase
            limits.check()
            self.board.update(record.job_id, phase=phase, **fields)
            if "epoch_metrics" in fields:
                figures = {
                    "loss": fields["loss"],
                    "train_loss": fields["train_loss"],
                    "validation_loss": fields["validation_loss"],
                    **fields["epoch_metrics"],
                }
                record.tracker.log_epoch(fields.get("group", ""), int(fields["epoch"]), figures)

        return report


def facts(
    request: JobRequest,
    planned: Plan,
    baseline: Baseline,
    *,
    rows: int | None = None,
    rollback_holds: int | None = None,
) -> JobFacts:
    """What the skip rules look at, from the stages so far."""
    return JobFacts(
        trigger=request.trigger,
        fingerprint=baseline.fingerprint,
        live_version=baseline.live_version,
        live_fingerprint=baseline.live_fingerprint,
        force=request.force,
        other_kind=bool(request.model_kind),
        data_path=request.data_path is not None,
        min_samples=planned.spec.min_samples,
        rows=rows,
        rollback_holds=rollback_holds,
    )


def skip_unless_go(known: JobFacts) -> None:
    """Raise Skipped (the job ends, recorded as skipped) when a skip rule applies."""
    reason = skip_reason(known)
    if reason is not None:
        raise pipeline.Skipped(reason)


def failure_reason(exc: BaseException) -> str:
    """An expected failure as the job and the history tell it: the message, no traceback."""
    if isinstance(exc, OddityError):
        return exc.message
    if isinstance(exc, ValueError):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)
