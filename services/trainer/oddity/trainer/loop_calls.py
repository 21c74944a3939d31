"""Calls from training threads to the async clients on the event loop.

Training runs on worker threads so the gRPC loop keeps answering; the clients of other
services (grpc.aio) live on the loop. A worker runs a client coroutine on the loop and blocks
for its result. When the trainer stops, calls in flight are cancelled and new ones refused,
so a job waiting for a remote service ends at once (job_control.Stopped) instead of at its
deadline.

Reason to change: how worker threads wait for the event loop and are stopped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from oddity.trainer.job_control import Stopped

T = TypeVar("T")


class LoopBridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[Any]] = set()

    def check(self) -> None:
        """Raise Stopped once the trainer is stopping (a job's limits call this: job_control.py)."""
        if self._stopping.is_set():
            raise Stopped()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the loop and return its result; called from a worker thread. The call
        is cancelled when the trainer stops (Stopped)."""
        with self._lock:
            if self._stopping.is_set():
                coro.close()
                raise Stopped()
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
            self._pending.add(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise Stopped() from None
        finally:
            with self._lock:
                self._pending.discard(future)

    def begin(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the loop and return at once (its `result()` waits). Not cancelled when
        the trainer stops: it runs to its own deadline (telling detectors about a version
        already published)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def sleep(self, seconds: float) -> None:
        """Wait in a worker thread; Stopped as soon as the trainer stops."""
        if self._stopping.wait(seconds):
            raise Stopped()

    def stop(self) -> None:
        """Refuse new interruptible calls and cancel those in flight."""
        with self._lock:
            self._stopping.set()
            for future in self._pending:
                future.cancel()
