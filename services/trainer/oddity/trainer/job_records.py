"""What a training job leaves behind, the last stage of every job whatever its outcome:
TRAINING_STARTED, then TRAINING_COMPLETED, TRAINING_SKIPPED, TRAINING_FAILED or
TRAINING_STOPPED (the trainer stopped meanwhile) in the history (with the details gathered
stage by stage); the job's final state on the board; the job metrics; the dataset's last run
(GetStatus, the retry backoff); the outcome on the job's experiment-tracking run. A job that
ended, stopped ones too, leaves no crash record and no checkpoints: the next start does not
report it as interrupted.

Reason to change: what a job's outcome records.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from oddity.common.logging import get_logger
from oddity.trainer.checkpoints import CheckpointStore
from oddity.trainer.data import LEFT_OUT_NAMES_SHOWN, Dataset
from oddity.trainer.history import History
from oddity.trainer.jobs import FAILED, RUNNING, SKIPPED, SUCCEEDED, Job, JobBoard, JobRequest, now
from oddity.trainer.metrics import STOPPED, TrainerMetrics
from oddity.trainer.tracking import NO_TRACKING, JobTracking

# Wider tables record no per-column figures in the history (the line would outgrow the rest).
COLUMN_FIGURES_SHOWN = 256

log = get_logger("oddity.trainer.runner")

# How many of the history's newest successful runs are read back at start: a dataset whose
# last success is older than that many successes (of all datasets) starts without one.
RESTORED_SUCCESSES = 10_000


@dataclass(frozen=True)
class LastRun:
    """What the latest jobs of a dataset found (shown by GetStatus)."""

    trained_at: datetime | None = None  # last successful run
    error: str = ""  # reason of the last failure, cleared by a success
    samples: int = 0
    group_samples: dict[str, int] = field(default_factory=dict)
    # Columns of the last load left out of the features for holding no numbers (the first
    # LEFT_OUT_NAMES_SHOWN), and how many there were.
    left_out_columns: tuple[str, ...] = ()
    left_out_column_count: int = 0
    failures: int = 0  # failed runs in a row (a Train request starts counting again)
    failed_at: float = 0.0  # time.time() of the last failure
    failed_fingerprint: str = ""  # the data and spec that failed: a change of either ends the backoff


@dataclass
class JobRecord:
    """One running job as recorded so far: the history details its stages added, its tracking
    run once started, and the fingerprint of its data once known (a failure keeps it, so
    the backoff knows which data failed)."""

    job_id: str
    dataset: str
    started: float = field(default_factory=time.perf_counter)
    details: dict[str, Any] = field(default_factory=dict)
    tracker: JobTracking = NO_TRACKING
    fingerprint: str = ""


class JobRecords:
    def __init__(
        self, board: JobBoard, history: History, metrics: TrainerMetrics, checkpoints: CheckpointStore
    ) -> None:
        self.board = board
        self.history = history
        self.metrics = metrics
        self.checkpoints = checkpoints
        self._last_runs: dict[str, LastRun] = {}

    def last_run(self, dataset: str) -> LastRun:
        return self._last_runs.get(dataset, LastRun())

    def restore(self) -> None:
        """At start: each dataset's last successful run as the history tells it (so GetStatus,
        its samples and left-out columns, and its metric survive a restart)."""
        for event in self.history.read(event_types=("TRAINING_COMPLETED",), limit=RESTORED_SUCCESSES):
            try:
                dataset, at = str(event["dataset"]), datetime.fromisoformat(event["timestamp"])
                details = event.get("details") or {}
                samples = int(details.get("samples", 0))
                left_out = tuple(str(c) for c in details.get("left_out_columns", ()))
                left_out_count = int(details.get("left_out_column_count", len(left_out)))
            except (KeyError, TypeError, ValueError, AttributeError):
                continue
            self._last_runs[dataset] = replace(  # oldest first: the newest wins
                self.last_run(dataset),
                trained_at=at,
                samples=samples,
                left_out_columns=left_out,
                left_out_column_count=left_out_count,
            )
            self.metrics.last_success.labels(dataset).set(at.timestamp())

    def interrupted(self, job: Job, reason: str) -> Job:
        """A job a killed trainer left running that does not resume: failed, on the board."""
        self.history.append(
            "TRAINING_FAILED", job.dataset, job.message, job_id=job.id, reason=reason, trigger=job.trigger
        )
        self.metrics.jobs.labels(job.dataset, FAILED).inc()
        return self.board.add(job)

    def begin(self, job_id: str, request: JobRequest) -> JobRecord:
        """The job runs: its crash record, and its details so far."""
        job = self.board.update(job_id, state=RUNNING, phase="loading", started_at=now())
        self.board.mark_running(job, **request.record())
        record = JobRecord(job_id, request.dataset, details={"job_id": job_id, "trigger": request.trigger})
        if request.resume is not None:
            record.details["resumes"] = request.resume.resumes
        if request.trigger == "api" and request.resume is None:  # an operator asked: what failed before starts over
            self._remember(request.dataset, failures=0)
        return record

    def started(self, record: JobRecord, message: str) -> None:
        self.history.append("TRAINING_STARTED", record.dataset, message, **record.details)

    def loaded(self, record: JobRecord, data: Dataset) -> None:
        """The rows the run trains on and the columns left out (GetStatus and the rows metric
        show them)."""
        left_out = data.left_out_columns
        self._remember(
            record.dataset,
            samples=len(data.features),
            left_out_columns=tuple(left_out[:LEFT_OUT_NAMES_SHOWN]),
            left_out_column_count=len(left_out),
        )
        self.metrics.last_run_rows.labels(record.dataset).set(len(data.features))
        record.details.update(
            samples=len(data.features),
            dropped_rows=data.dropped_rows,
            rows_seen=data.rows_seen or len(data.features) + data.dropped_rows,
            rows_used=int(np.count_nonzero(data.in_group_sample() | data.in_all_sample())),
        )
        if data.column_figures is not None and len(data.column_figures) <= COLUMN_FIGURES_SHOWN:
            record.details.update(columns=data.column_figures)
        if left_out:
            record.details.update(left_out_columns=left_out[:LEFT_OUT_NAMES_SHOWN], left_out_column_count=len(left_out))

    def trained(self, record: JobRecord, group_samples: dict[str, int]) -> None:
        self._remember(record.dataset, group_samples=group_samples)

    def completed(self, record: JobRecord, message: str) -> None:
        """The version is written: TRAINING_COMPLETED (before the announcement's PUBLISHED)."""
        self.history.append("TRAINING_COMPLETED", record.dataset, message, **record.details)

    def succeeded(self, record: JobRecord, message: str, version: int, metrics: dict[str, float]) -> None:
        finished = now()
        self._remember(record.dataset, trained_at=finished, error="", failures=0)
        self.metrics.last_success.labels(record.dataset).set(finished.timestamp())
        self._finish(record, SUCCEEDED, message, published_version=version, metrics=metrics)

    def skipped(self, record: JobRecord, reason: str) -> None:
        self.history.append("TRAINING_SKIPPED", record.dataset, reason, reason=reason, **record.details)
        self._remember(record.dataset, failures=0)
        record.tracker.set_tags({"oddity.outcome": SKIPPED, "oddity.message": reason})
        self._finish(record, SKIPPED, reason)

    def failed(self, record: JobRecord, reason: str, outcome: str = FAILED) -> None:
        """A failure (`outcome` rejected: the validation gate refused the model); the live
        model stays as it is, and automatic retries of the same data back off."""
        previous = self.last_run(record.dataset)
        self._remember(
            record.dataset,
            error=reason,
            failures=previous.failures + 1,
            failed_at=time.time(),
            failed_fingerprint=record.fingerprint,
        )
        self.history.append("TRAINING_FAILED", record.dataset, reason, reason=reason, **record.details)
        self._finish(record, FAILED, reason, outcome=outcome)

    def stopped(self, record: JobRecord, message: str) -> None:
        """The trainer stopped while the job ran: nothing was published. Not a failure of the
        data, so the retry backoff does not count it; the job's state is failed (the API has
        no other end for it), its outcome in the history and the metrics is stopped."""
        self.history.append("TRAINING_STOPPED", record.dataset, message, reason=message, **record.details)
        record.tracker.set_tags({"oddity.outcome": STOPPED, "oddity.message": message})
        self._finish(record, FAILED, message, outcome=STOPPED)

    def _remember(self, dataset: str, **changes: Any) -> None:
        run = self._last_runs[dataset] = replace(self.last_run(dataset), **changes)
        self.metrics.consecutive_failures.labels(dataset).set(run.failures)

    def _finish(self, record: JobRecord, state: str, message: str, *, outcome: str = "", **fields: Any) -> None:
        """End the job in `state`; its metrics count it under `outcome` (the state unless the
        validation gate refused the model: rejected)."""
        outcome = outcome or state
        self.board.mark_finished(record.job_id)
        self.checkpoints.remove(record.job_id)  # a job that ended never resumes
        self.metrics.jobs.labels(record.dataset, outcome).inc()
        self.metrics.job_seconds.labels(record.dataset, outcome).observe(time.perf_counter() - record.started)
        # Last: a watcher that sees the job done also sees its history and metrics.
        self.board.update(record.job_id, state=state, phase="done", message=message, finished_at=now(), **fields)
        log.info("job finished", dataset=record.dataset, job_id=record.job_id, outcome=state, message=message)
