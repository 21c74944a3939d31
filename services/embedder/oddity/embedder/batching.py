"""Dynamic batching: concurrent requests are gathered up to `max_batch_size` items or
`max_wait` seconds, whichever comes first, and run as one ONNX call on a worker thread.
While a batch runs, the next one gathers. A failed batch fails every waiting caller with
the reason.

Reason to change: how concurrent requests are batched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from oddity.common.errors import Internal, OddityError


@dataclass(slots=True)
class _Entry:
    payload: Any
    size: int
    future: asyncio.Future
    queued_at: float  # time.monotonic() when submitted


class DynamicBatcher:
    def __init__(
        self,
        run: Callable[[list[Any]], np.ndarray],
        executor: Executor,
        *,
        max_batch_size: int = 32,
        max_wait: float = 0.005,
        observe_batch: Callable[[int], None] | None = None,
        observe_wait: Callable[[float], None] | None = None,
    ) -> None:
        self._run = run  # payloads -> one array whose rows follow the payloads' items in order
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self._observe_batch = observe_batch  # told the items of every batch
        self._observe_wait = observe_wait  # told each request's wait from submit to its batch's call
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._carry: _Entry | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, payload: Any, size: int) -> np.ndarray:
        """Queue `size` items (at most max_batch_size) and wait for their rows."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="oddity-embed-batcher")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Entry(payload, size, future, time.monotonic()))
        return await future

    async def _next(self, timeout: float | None) -> _Entry:
        if self._carry is not None:
            entry, self._carry = self._carry, None
            return entry
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._next(None)]
            size = batch[0].size
            deadline = loop.time() + self.max_wait
            while size < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    entry = await self._next(remaining)
                except TimeoutError:
                    break
                if size + entry.size > self.max_batch_size:
                    self._carry = entry  # starts the next batch
                    break
                batch.append(entry)
                size += entry.size
            # Callers cancelled while their entries waited (client gone, deadline passed) are dropped.
            batch = [e for e in batch if not e.future.cancelled()]
            if not batch:
                continue
            size = sum(e.size for e in batch)
            if self._observe_batch is not None:
                self._observe_batch(size)
            try:
                rows = await loop.run_in_executor(self._executor, self._run_batch, batch)
            except OddityError as exc:
                self._fail(batch, exc)
            except Exception as exc:
                self._fail(
                    batch, Internal(f"inference failed for a batch of {size} items: {type(exc).__name__}: {exc}")
                )
            else:
                start = 0
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_result(rows[start : start + entry.size])
                    start += entry.size

    def _run_batch(self, batch: list[_Entry]) -> np.ndarray:
        """On the executor: the wait ends here, not when the batch was formed, because
        batches of other models may hold the worker."""
        if self._observe_wait is not None:
            started = time.monotonic()
            for entry in batch:
                self._observe_wait(started - entry.queued_at)
        return self._run([e.payload for e in batch])

    @staticmethod
    def _fail(batch: list[_Entry], error: Exception) -> None:
        for entry in batch:
            if not entry.future.done():
                entry.future.set_exception(error)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
