"""The auto-training policy: which jobs start without anyone calling Train.

- `on_change` datasets train when their data differs from the live version's (by content
  fingerprint): after file events, once the dataset has been quiet for its
  `debounce_seconds`; at start-up; and on every periodic scan (the fallback for missed events).
- `interval` datasets train every `interval_hours` (a run on unchanged data is skipped by the
  runner), and at start-up when their data changed.
- `manual` datasets train only when asked.

A trigger for a dataset that is training now is remembered and acted on once that job ends
(if the data still differs from the live version then).

Reason to change: when the trainer trains on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterable
from typing import Any

from oddity.common.logging import get_logger
from oddity.trainer.catalogue import DatasetCatalogue
from oddity.trainer.jobs import Job
from oddity.trainer.runner import JobRequest, JobRunner

log = get_logger("oddity.trainer.auto_training")

DEFAULT_DEBOUNCE_SECONDS = 1.0  # a dataset not read yet (its spec names its own)


class AutoTrainer:
    def __init__(self, catalogue: DatasetCatalogue, runner: JobRunner) -> None:
        self.catalogue = catalogue
        self.runner = runner
        self._quiet: dict[str, asyncio.Task[None]] = {}  # dataset -> debounce timer
        self._queued: dict[str, str] = {}  # dataset -> trigger waiting for its running job
        self._interval_runs: dict[str, float] = {}  # dataset -> monotonic time of the last interval run
        self._tasks: set[asyncio.Task[None]] = set()

    async def startup(self) -> None:
        await self._evaluate("startup")

    async def scan(self) -> None:
        """The periodic scan: missed file events, and the clock of interval datasets."""
        await self._evaluate("scan")

    def files_changed(self, datasets: Iterable[str]) -> None:
        """File events in these dataset folders: evaluate each once it has been quiet."""
        for name in datasets:
            previous = self._quiet.pop(name, None)
            if previous is not None:
                previous.cancel()
            self._quiet[name] = asyncio.create_task(self._after_quiet(name), name=f"oddity-debounce-{name}")

    async def close(self) -> None:
        tasks = [*self._quiet.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _after_quiet(self, name: str) -> None:
        entry = self.catalogue.find(name)
        spec = entry.spec if entry is not None else None
        await asyncio.sleep(spec.retrain.debounce_seconds if spec is not None else DEFAULT_DEBOUNCE_SECONDS)
        self._quiet.pop(name, None)
        try:
            await self._evaluate("file_change", only={name})
        except Exception:
            log.exception("automatic training failed to start", dataset=name)

    async def _evaluate(self, trigger: str, only: set[str] | None = None) -> None:
        changed = await asyncio.to_thread(self.catalogue.refresh)
        for entry in self.catalogue.entries():
            spec = entry.spec
            if spec is None or (only is not None and entry.name not in only):
                continue
            if spec.retrain.policy == "on_change" and entry.name in changed:
                self._start(entry.name, trigger)
            elif spec.retrain.policy == "interval":
                last = self._interval_runs.get(entry.name)
                if last is None:
                    self._interval_runs[entry.name] = time.monotonic()
                    if entry.name in changed:
                        self._start(entry.name, "interval")
                elif time.monotonic() - last >= spec.retrain.interval_hours * 3600:
                    self._interval_runs[entry.name] = time.monotonic()
                    self._start(entry.name, "interval")

    def _start(self, name: str, trigger: str) -> None:
        running = self.runner.running_for(name)
        if running is None:
            self.runner.submit(JobRequest(dataset=name, folder=self.catalogue.get(name).folder, trigger=trigger))
        elif name not in self._queued:
            self._queued[name] = trigger
            self._spawn(self._after_job(running, name))

    async def _after_job(self, job: Job, name: str) -> None:
        try:
            await self.runner.wait(job.id)
        finally:
            trigger = self._queued.pop(name)
        changed = await asyncio.to_thread(self.catalogue.refresh)
        if name in changed:
            self._start(name, trigger)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
