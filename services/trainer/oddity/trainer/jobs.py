"""Training jobs: their state, progress subscribers, and a record that survives a crash.

A job is an immutable snapshot; every change replaces the board's snapshot at once, so a
reader on the event loop (GetJob, WatchJob) never sees half of an update made by a worker
thread (e.g. state "failed" without its message).

A job runs a `JobRequest` (the dataset, what started it, the Train request's overrides). The
crash record of a running job holds what it takes to run it again (its request and its
experiment-tracking run), so a job with checkpoints can resume after the trainer was killed.

Reason to change: what a job is and how its progress is seen and survives a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

QUEUED, RUNNING, SUCCEEDED, FAILED, SKIPPED = "queued", "running", "succeeded", "failed", "skipped"
TERMINAL = (SUCCEEDED, FAILED, SKIPPED)
INTERRUPTED_MESSAGE = "interrupted: the trainer stopped during this job"


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Job:
    dataset: str
    trigger: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    state: str = QUEUED
    phase: str = ""
    group: str = ""
    epoch: int = 0
    total_epochs: int = 0
    loss: float = 0.0
    # Kinds that train in epochs: the last epoch's losses and figures on the validation rows.
    train_loss: float = 0.0
    validation_loss: float = 0.0
    epoch_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from_epoch: int = 0
    # What epoch and total_epochs count: epoch (loss is the epoch's), member or step (no loss).
    progress_unit: str = ""
    message: str = ""
    created_at: datetime = field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    published_version: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


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
    trigger: str  # api, file_change, scan, interval, startup, data_changed_after_rollback
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


class JobBoard:
    """All jobs of this trainer process, and who is watching them.

    Changes may come from worker threads; watchers are woken on the event loop.
    """

    def __init__(self, state_dir: Path, loop: asyncio.AbstractEventLoop, keep: int = 1000) -> None:
        self.state_dir = state_dir
        self.keep = keep
        self._loop = loop
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._watchers: dict[str, set[asyncio.Queue[None]]] = {}

    def add(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
            if len(self._jobs) > self.keep:
                for old in [j for j in self._jobs.values() if j.done][: len(self._jobs) - self.keep]:
                    del self._jobs[old.id]
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def running_for(self, dataset: str) -> Job | None:
        return next((j for j in list(self._jobs.values()) if j.dataset == dataset and not j.done), None)

    def update(self, job_id: str, **fields: Any) -> Job:
        """Replace the job's snapshot; callable from any thread."""
        with self._lock:
            job = replace(self._jobs[job_id], **fields)
            self._jobs[job_id] = job
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake, job_id)
        return job

    def _wake(self, job_id: str) -> None:
        for queue in self._watchers.get(job_id, ()):
            queue.put_nowait(None)

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """Yield the job now and after every change, until it ends (changes in a burst are
        coalesced: a watcher sees the newest snapshot)."""
        queue: asyncio.Queue[None] = asyncio.Queue()
        self._watchers.setdefault(job_id, set()).add(queue)
        try:
            job = self._jobs[job_id]
            while True:
                yield job
                if job.done:
                    return
                await queue.get()
                while not queue.empty():
                    queue.get_nowait()
                job = self._jobs.get(job_id, job)
        finally:
            self._watchers[job_id].discard(queue)
            if not self._watchers[job_id]:
                del self._watchers[job_id]

    # -- crash record ----------------------------------------------------------------------

    def mark_running(self, job: Job, **details: Any) -> None:
        """Leave a file while the job runs: if the process dies, the next start finds it.
        `details` (JSON values: the request, the tracking run) are kept in it for a resume;
        called again, it replaces them (written, then renamed: a kill leaves one whole file)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / f"{job.id}.json"
        record = {
            **details,
            "id": job.id,
            "dataset": job.dataset,
            "trigger": job.trigger,
            "started_at": (job.started_at or now()).isoformat(),
        }
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)

    def mark_finished(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_dir / f"{job_id}.json")

    def interrupted(self) -> list[tuple[Job, dict[str, Any]]]:
        """Jobs a previous process left running, each with its crash record (as written by
        mark_running); the records are removed. The jobs are not on the board yet: the caller
        adds each one as failed (interrupted) or resumes it."""
        found = []
        for path in sorted(self.state_dir.glob("*.json")) if self.state_dir.exists() else []:
            try:
                record = json.loads(path.read_text())
                job = Job(
                    dataset=record["dataset"],
                    trigger=record.get("trigger", ""),
                    id=record["id"],
                    state=FAILED,
                    message=INTERRUPTED_MESSAGE,
                    started_at=datetime.fromisoformat(record["started_at"]),
                    finished_at=now(),
                )
            except (ValueError, KeyError, TypeError):
                job = None
            path.unlink(missing_ok=True)
            if job is not None:
                found.append((job, record))
        for path in self.state_dir.glob(".*.tmp") if self.state_dir.exists() else []:
            path.unlink(missing_ok=True)  # a record that was being rewritten when the process died
        return found
