"""Training jobs: their state, progress subscribers, and a record that survives a crash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

QUEUED, RUNNING, SUCCEEDED, FAILED, SKIPPED = "queued", "running", "succeeded", "failed", "skipped"
TERMINAL = (SUCCEEDED, FAILED, SKIPPED)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
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
    message: str = ""
    created_at: datetime = field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    published_version: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


class JobBoard:
    """All jobs of this trainer process, and who is watching them.

    Changes come from worker threads; `changed` is called on the event loop (via
    call_soon_threadsafe) and wakes every watcher of that job.
    """

    def __init__(self, state_dir: Path, keep: int = 1000) -> None:
        self.state_dir = state_dir
        self.keep = keep
        self.jobs: dict[str, Job] = {}
        self._watchers: dict[str, set[asyncio.Queue]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def add(self, job: Job) -> Job:
        self.jobs[job.id] = job
        if len(self.jobs) > self.keep:
            for old in [j for j in self.jobs.values() if j.done][: len(self.jobs) - self.keep]:
                del self.jobs[old.id]
        return job

    def running_for(self, dataset: str) -> Job | None:
        return next((j for j in self.jobs.values() if j.dataset == dataset and not j.done), None)

    def update(self, job: Job, **fields) -> None:
        """Called from any thread."""
        for key, value in fields.items():
            setattr(job, key, value)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake, job.id)

    def _wake(self, job_id: str) -> None:
        for queue in self._watchers.get(job_id, ()):
            queue.put_nowait(None)

    async def watch(self, job: Job):
        """Yield the job now and after every change, until it ends."""
        queue: asyncio.Queue = asyncio.Queue()
        self._watchers.setdefault(job.id, set()).add(queue)
        try:
            while True:
                yield job
                if job.done:
                    return
                await queue.get()
                while not queue.empty():  # coalesce bursts of progress
                    queue.get_nowait()
        finally:
            self._watchers[job.id].discard(queue)
            if not self._watchers[job.id]:
                del self._watchers[job.id]

    # -- crash record ----------------------------------------------------------------------

    def mark_running(self, job: Job) -> None:
        """Leave a file while the job runs: if the process dies, the next start finds it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / f"{job.id}.json"
        path.write_text(
            json.dumps(
                {
                    "id": job.id,
                    "dataset": job.dataset,
                    "trigger": job.trigger,
                    "started_at": (job.started_at or now()).isoformat(),
                }
            )
        )

    def mark_finished(self, job: Job) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state_dir / f"{job.id}.json")

    def interrupted(self) -> list[Job]:
        """Jobs a previous process left running; their records are removed."""
        found = []
        for path in sorted(self.state_dir.glob("*.json")) if self.state_dir.exists() else []:
            try:
                record = json.loads(path.read_text())
                job = Job(
                    dataset=record["dataset"],
                    trigger=record.get("trigger", ""),
                    id=record["id"],
                    state=FAILED,
                    message="interrupted: the trainer stopped during this job",
                    started_at=datetime.fromisoformat(record["started_at"]),
                    finished_at=now(),
                )
            except (ValueError, KeyError):
                job = None
            path.unlink(missing_ok=True)
            if job is not None:
                found.append(self.add(job))
        return found
