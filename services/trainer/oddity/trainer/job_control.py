"""A running job's limits, checked from inside long loops: the trainer stopping, and the job's
time budget (`training.time_budget_seconds`, counted from the job's start).

The runner opens `running(...)` on the job's worker thread; long numeric steps (a kNN distance
block, an optimizer batch, a fold, a candidate) and the ingestion's chunks call `check()`
between pieces of work, so a stop or a spent budget ends the job within one piece instead of
after the whole step. No signature carries it: the limits live in a context variable of the
job's thread. Outside a job (a learner used directly, a benchmark, a test) `check()` does
nothing. A helper thread a job starts does not inherit the variable: it calls `current()` on
the job's thread and that object's `check()`.

A stop or a spent budget raises a `JobEnded` subclass, a BaseException: the `except Exception`
around a step (a reader that turns any error into "file cannot be read") must not take it for
that step's failure.

Reason to change: what ends a running job early, and how its loops learn of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

STOPPED_MESSAGE = "stopped: the trainer is shutting down; nothing was published"


class JobEnded(BaseException):
    """The job ends here and publishes nothing (not an error of the step it was in)."""


class Stopped(JobEnded):
    """The trainer is stopping (SIGTERM, Ctrl-C)."""

    def __init__(self, message: str = STOPPED_MESSAGE) -> None:
        super().__init__(message)


class TimeBudgetSpent(JobEnded):
    """The job ran past training.time_budget_seconds."""


class JobLimits:
    """One job's limits: `stopping()` raises Stopped once the trainer stops; the budget (None:
    none yet, until the spec is read) counts from `started` (time.monotonic())."""

    def __init__(self, stopping: Callable[[], None], started: float | None = None) -> None:
        self._stopping = stopping
        self.started = time.monotonic() if started is None else started
        self.budget_seconds: float | None = None
        self._deadline = float("inf")
        self.phase = "loading"  # what the job was doing, for the budget's message

    def set_budget(self, seconds: float) -> None:
        self.budget_seconds = seconds
        self._deadline = self.started + seconds

    def check(self) -> None:
        """Raise Stopped or TimeBudgetSpent; cheap enough for every batch (about 1 µs, a batch
        takes hundreds)."""
        self._stopping()
        if time.monotonic() > self._deadline:
            raise TimeBudgetSpent(
                f"the job took longer than training.time_budget_seconds ({self.budget_seconds:g} s); it was "
                f"{self.phase}. Nothing was published: raise training.time_budget_seconds in dataset.yaml, "
                "or lower training.max_rows"
            )


_current: ContextVar[JobLimits | None] = ContextVar("oddity_job_limits", default=None)


@contextmanager
def running(limits: JobLimits) -> Iterator[JobLimits]:
    """The job's limits for `check()` on this thread, until the block ends."""
    token = _current.set(limits)
    try:
        yield limits
    finally:
        _current.reset(token)


def current() -> JobLimits | None:
    """The limits of the job this thread runs (None outside a job)."""
    return _current.get()


def check() -> None:
    """Raise Stopped or TimeBudgetSpent when the running job must end; nothing outside a job."""
    limits = _current.get()
    if limits is not None:
        limits.check()
