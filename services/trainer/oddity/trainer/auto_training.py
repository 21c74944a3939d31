"""The auto-training policy: which jobs start without anyone calling Train.

- `on_change` datasets train when their data differs from the live version's (by content
  fingerprint): after file events, at start-up and on every periodic scan (the fallback for
  missed events) — but only once their files have settled: quiet for `debounce_seconds`
  (the same rule for events, scans and new folders) and unchanged between two looks (after
  a file event the first look is taken as the quiet time starts, so the look that ends it
  settles the files at once; a scan looks again `CONFIRM_SECONDS` later), and,
  with `retrain.ready_marker`, handed off by a `_READY` file newer than the data. Files named
  as in progress (dotfiles, `*.tmp`, `*.partial`, ...) are never read: write, then rename.
- `interval` datasets train every `interval_hours` (a run on unchanged data is skipped by the
  runner), and at start-up when their data changed.
- `manual` datasets train only when asked.

After a Rollback the restored version serves until the data changes; then the trainer
retrains (trigger `data_changed_after_rollback` in the history), or with
`retrain.after_rollback: hold` waits for Train.

A dataset whose last runs failed on the same data and spec is retried with exponential backoff
(`retry_backoff_seconds`, doubling per failure in a row, at most `retry_backoff_max_seconds`);
a change of its files or spec, or a Train request, ends the wait.

A trigger for a dataset that is training now is remembered and acted on once that job ends
(if the data still differs from the live version then).

Reason to change: when the trainer trains on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from oddity.common.logging import get_logger
from oddity.trainer.data import file_states, ready_marker_time
from oddity.trainer.datasets import DatasetEntry, Datasets
from oddity.trainer.decisions import DecisionBook
from oddity.trainer.job_records import LastRun
from oddity.trainer.jobs import Job, JobRequest
from oddity.trainer.runner import JobRunner
from oddity.trainer.spec import DEFAULT_DEBOUNCE_SECONDS, DatasetSpec

log = get_logger("oddity.trainer.auto_training")

# The second look at a dataset whose files have been quiet for the debounce comes this much later.
CONFIRM_SECONDS = 0.5


@dataclass(frozen=True)
class Backoff:
    """Waits between automatic retries of data that failed: base * 2^(failures - 1), capped."""

    base_seconds: float = 30.0
    max_seconds: float = 3600.0

    def delay(self, failures: int) -> float:
        return min(self.max_seconds, self.base_seconds * 2.0 ** max(failures - 1, 0))

    def next_retry(self, run: LastRun, fingerprint: str) -> float | None:
        """When (time.time()) automatic training may retry data that failed; None: it may now
        (no failure, or the files or spec changed since)."""
        if not run.failures or fingerprint != run.failed_fingerprint:
            return None
        at = run.failed_at + self.delay(run.failures)
        return at if time.time() < at else None


class AutoTrainer:
    def __init__(
        self, datasets: Datasets, runner: JobRunner, decisions: DecisionBook, backoff: Backoff | None = None
    ) -> None:
        self.datasets = datasets
        self.runner = runner
        self.decisions = decisions
        self.backoff = backoff or Backoff()
        self._quiet: dict[str, asyncio.Task[None]] = {}  # dataset -> debounce timer
        self._queued: dict[str, str] = {}  # dataset -> trigger waiting for its running job
        self._interval_runs: dict[str, float] = {}  # dataset -> monotonic time of the last interval run
        self._looks: dict[str, dict[str, tuple[int, int]]] = {}  # dataset -> file states at the last look
        self._rechecks: dict[str, asyncio.Task[None]] = {}  # dataset -> a later look at unsettled files
        self._tasks: set[asyncio.Task[None]] = set()

    async def startup(self) -> None:
        await self._evaluate("startup")

    async def scan(self) -> None:
        """The periodic scan: missed file events, and the clock of interval datasets."""
        await self._evaluate("scan")

    def files_changed(self, datasets: Iterable[str]) -> None:
        """File events in these dataset folders: evaluate each once it has been quiet."""
        names = sorted(datasets)
        log.debug("dataset files changed", datasets=names)
        for name in names:
            previous = self._quiet.pop(name, None)
            if previous is not None:
                previous.cancel()
            self._quiet[name] = asyncio.create_task(self._after_quiet(name), name=f"oddity-debounce-{name}")

    async def close(self) -> None:
        tasks = [*self._quiet.values(), *self._rechecks.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _after_quiet(self, name: str) -> None:
        entry = self.datasets.find(name)
        # A folder no scan has read yet (a new dataset) waits for its own spec's debounce too.
        spec = entry.spec if entry is not None else await asyncio.to_thread(self.datasets.read_spec, name)
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + (spec.retrain.debounce_seconds if spec is not None else DEFAULT_DEBOUNCE_SECONDS)
        if spec is not None:
            await self._first_look(name, spec)
        await asyncio.sleep(quiet_until - loop.time())
        self._quiet.pop(name, None)
        await self._evaluate_one("file_change", name)

    async def _first_look(self, name: str, spec: DatasetSpec) -> None:
        """The files as the quiet time starts: the look after the debounce compares with this
        one, so files that did not move settle then, with no second look `CONFIRM_SECONDS` later."""
        try:
            self._looks[name] = await asyncio.to_thread(file_states, self.datasets.root / name, spec)
        except OSError:
            self._looks.pop(name, None)  # the look after the debounce starts afresh

    async def _evaluate_one(self, trigger: str, name: str) -> None:
        """A delayed look at one dataset: a failure is logged, never raised into a timer task."""
        try:
            await self._evaluate(trigger, only={name})
        except Exception:
            log.exception("automatic training failed to start", dataset=name)

    async def _evaluate(self, trigger: str, only: set[str] | None = None) -> None:
        changed = await asyncio.to_thread(self.datasets.refresh)
        for entry in self.datasets.entries():
            spec = entry.spec
            if spec is None or (only is not None and entry.name not in only):
                continue
            if self.backoff.next_retry(self.runner.last_run(entry.name), entry.fingerprint) is not None:
                continue
            pin = self.decisions.get(entry.name).pin
            if pin is not None and (pin.hold or pin.fingerprint == entry.fingerprint):
                continue  # the rolled-back version serves until the data changes (or Train, with hold)
            why = "data_changed_after_rollback" if pin is not None else trigger
            if spec.retrain.policy == "on_change" and entry.name in changed:
                if self._settled(entry, why):
                    self._start(entry.name, why)
            elif spec.retrain.policy == "interval":
                last = self._interval_runs.get(entry.name)
                if last is None:
                    if entry.name in changed and not self._settled(entry, trigger):
                        continue
                    self._interval_runs[entry.name] = time.monotonic()
                    if entry.name in changed:
                        self._start(entry.name, "interval")
                elif time.monotonic() - last >= spec.retrain.interval_hours * 3600:
                    if not self._settled(entry, trigger):
                        continue
                    self._interval_runs[entry.name] = time.monotonic()
                    self._start(entry.name, "interval")

    def _settled(self, entry: DatasetEntry, trigger: str) -> bool:
        """Whether the dataset's files may be read now; if not, a later look is scheduled."""
        assert entry.spec is not None
        retrain = entry.spec.retrain
        try:
            states = file_states(entry.folder, entry.spec)
        except OSError:
            return True  # the run itself reports what cannot be read
        newest = max((mtime for _, mtime in states.values()), default=0)
        if retrain.ready_marker:
            marker = ready_marker_time(entry.folder)
            if marker is None or marker < newest:
                return False  # the producer has not handed off yet: its `_READY` brings an event
        quiet_for = time.time() - newest / 1e9
        if quiet_for < retrain.debounce_seconds:
            self._looks[entry.name] = states
            self._recheck(entry.name, trigger, retrain.debounce_seconds - quiet_for)
            return False
        if self._looks.get(entry.name) != states:  # the first look since the files last moved
            self._looks[entry.name] = states
            self._recheck(entry.name, trigger, CONFIRM_SECONDS)
            return False
        self._looks.pop(entry.name, None)
        return True

    def _recheck(self, name: str, trigger: str, delay: float) -> None:
        pending = self._rechecks.get(name)
        if pending is not None and not pending.done():
            return

        async def look_again() -> None:
            await asyncio.sleep(delay)
            self._rechecks.pop(name, None)
            await self._evaluate_one(trigger, name)

        self._rechecks[name] = asyncio.create_task(look_again(), name=f"oddity-settle-{name}")

    def _start(self, name: str, trigger: str) -> None:
        running = self.runner.running_for(name)
        if running is None:
            self.runner.submit(JobRequest(dataset=name, folder=self.datasets.get(name).folder, trigger=trigger))
        elif name not in self._queued:
            self._queued[name] = trigger
            self._spawn(self._after_job(running, name))

    async def _after_job(self, job: Job, name: str) -> None:
        try:
            await self.runner.wait(job.id)
        finally:
            trigger = self._queued.pop(name)
        await self._evaluate(trigger, only={name})  # the same rules: settled, no hold, no backoff

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
