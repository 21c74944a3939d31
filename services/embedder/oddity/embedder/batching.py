"""Dynamic batching: concurrent requests are gathered up to `max_batch_size` items or
`max_wait` seconds, whichever comes first, and run as one ONNX call on a worker thread.

Batches are pipelined: while one batch runs in ONNX Runtime, the next one gathers (past
`max_wait` if need be: it cannot start before the running one ends anyway) and is prepared
(`prepare`: texts tokenized, pixels stacked) on the preprocessing pool, so it starts the
moment the running one ends. One batch runs at a time. A failed batch fails every waiting
caller with the reason.

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
        run: Callable[[Any], np.ndarray],
        executor: Executor,
        *,
        prepare: Callable[[list[Any]], Any] | None = None,
        prepare_executor: Executor | None = None,
        max_batch_size: int = 32,
        max_wait: float = 0.005,
        observe_batch: Callable[[int], None] | None = None,
        observe_wait: Callable[[float], None] | None = None,
    ) -> None:
        # prepare(payloads) -> inputs; run(inputs) -> one array whose rows follow the payloads'
        # items in order. Without prepare, run gets the payloads.
        self._run = run
        self._executor = executor
        self._prepare = prepare
        self._prepare_executor = prepare_executor
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self._observe_batch = observe_batch  # told the items of every batch
        self._observe_wait = observe_wait  # told each request's wait from submit to its batch's call
        self._queue: asyncio.Queue[_Entry] = asyncio.Queue()
        self._carry: _Entry | None = None
        self._task: asyncio.Task | None = None
        self._running: asyncio.Task | None = None

    async def submit(self, payload: Any, size: int) -> np.ndarray:
        """Queue `size` items (at most max_batch_size) and wait for their rows."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="oddity-embed-batcher")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Entry(payload, size, future, time.monotonic()))
        return await future

    async def _next(self, timeout: float | None, running: asyncio.Task | None = None) -> _Entry | None:
        """The next entry; None when `running` ended first; TimeoutError after `timeout`."""
        if self._carry is not None:
            entry, self._carry = self._carry, None
            return entry
        if running is None:
            if timeout is None:
                return await self._queue.get()
            return await asyncio.wait_for(self._queue.get(), timeout)
        get = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({get, running}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()  # a pending Queue.get gives up without taking an entry
        if running in done:
            return None
        raise TimeoutError

    async def _gather(self) -> list[_Entry]:
        loop = asyncio.get_running_loop()
        first = await self._next(None)
        assert first is not None
        batch, size = [first], first.size
        deadline = loop.time() + self.max_wait
        while size < self.max_batch_size:
            remaining = deadline - loop.time()
            running = self._running if self._running is not None and not self._running.done() else None
            if remaining <= 0 and running is None:
                break
            try:
                entry = await self._next(remaining if remaining > 0 else None, running)
            except TimeoutError:
                if running is None:
                    break
                continue  # the wait is over but the running batch holds the worker: keep gathering
            if entry is None:
                continue  # the running batch ended: start as soon as max_wait allows
            if size + entry.size > self.max_batch_size:
                self._carry = entry  # starts the next batch
                break
            batch.append(entry)
            size += entry.size
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            # Callers cancelled while their entries waited (client gone, deadline passed) are dropped.
            batch = [e for e in batch if not e.future.cancelled()]
            if not batch:
                continue
            size = sum(e.size for e in batch)
            if self._observe_batch is not None:
                self._observe_batch(size)
            payloads = [e.payload for e in batch]
            try:
                if self._prepare is None:
                    inputs = payloads
                else:  # overlaps the running batch
                    inputs = await loop.run_in_executor(self._prepare_executor, self._prepare, payloads)
            except Exception as exc:
                self._fail(batch, self._error(exc, size))
                continue
            if self._running is not None:
                await self._running  # one batch in ONNX Runtime at a time; _execute never raises
            self._running = asyncio.create_task(self._execute(batch, inputs, size))

    async def _execute(self, batch: list[_Entry], inputs: Any, size: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            rows = await loop.run_in_executor(self._executor, self._run_batch, batch, inputs)
        except Exception as exc:
            self._fail(batch, self._error(exc, size))
            return
        start = 0
        for entry in batch:
            if not entry.future.done():
                entry.future.set_result(rows[start : start + entry.size])
            start += entry.size

    @staticmethod
    def _error(exc: Exception, size: int) -> OddityError:
        if isinstance(exc, OddityError):
            return exc
        return Internal(f"inference failed for a batch of {size} items: {type(exc).__name__}: {exc}")

    def _run_batch(self, batch: list[_Entry], inputs: Any) -> np.ndarray:
        """On the executor: the wait ends here, not when the batch was formed, because
        batches of other models may hold the worker."""
        if self._observe_wait is not None:
            started = time.monotonic()
            for entry in batch:
                self._observe_wait(started - entry.queued_at)
        return self._run(inputs)

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
        if self._running is not None:
            await self._running
