"""Micro-batching of small concurrent requests.

Concurrent requests for the same model version (and the same threshold percentile) are
coalesced into one ONNX Runtime call, so the per-call costs of ONNX Runtime and numpy (and
of reading the weights from memory, which dominates one-row calls) are paid once per batch
instead of once per request.

A batch closes at `max_batch_rows` rows or `max_batch_values` values (rows x features),
whichever comes first: wide rows (769-d embeddings) make a batch's cost grow with its values,
not its rows.

Small batches run on the event loop (a thread hop costs more than they do). The others run
one at a time on a thread of their own (`batch_thread`), as they ran on the loop before, but
beside it, so that health checks and other calls are not held behind them; not on the
workers of large requests, where they would wait behind those. While the batch thread is
busy, a due batch for it stays open and gathers requests until the thread is free or the
batch is full, as requests gathered while the loop was busy before: one call per large batch
reads the model's weights once (a kNN reads its whole reference per call). A batch is small
when it has at most `inline_max_values` values and the version's recent batches say it takes
at most `inline_max_seconds` of CPU time: the cost of a value differs a thousandfold between
models (a kNN over 20,000 reference rows spends about 1 ms on one 769-d row, 0.2 s on 256;
see bench/health_under_load.py). CPU time, not wall time, which grows when other threads
take the cores. A batch on the batch thread holds its own lease on the version, so the
version outlives callers that give up while it runs.

The first request of a batch schedules its flush; requests arriving before the flush join
it. Waiting pays only under load, so the batcher learns whether it does: a batch that
waited (up to `max_delay`, or until it was full) records how many requests joined it. While
waiting batches gather company the next batch waits too; once they stop (a lone caller)
batches flush on the next loop iteration and nothing waits, except one probe every
`PROBE_EVERY` batches that checks whether load has come back.

A batch's rows, anomalies and scores are recorded once per scoring call (`observe_scores`),
not once per request: a few microseconds a batch instead of a request.

A batch that fails (say one request routes to a group without a model) is retried request
by request, so only the guilty request fails. A cancelled request leaves its batch before it
runs.

Reason to change: how concurrent small requests share ONNX Runtime calls.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from oddity.common.errors import OddityError
from oddity.common.scoring import RoutingValues, Scores
from oddity.detector.model import LoadedModel


@dataclass(slots=True)
class _Waiting:
    rows: np.ndarray
    routing_values: Sequence[float]
    future: asyncio.Future


@dataclass(slots=True)
class _Batch:
    waiting: list[_Waiting]
    rows: int = 0
    values: int = 0
    waited: bool = False
    held: bool = False  # due, but waits (and gathers requests) until the batch thread is free


# What one batch's callers get back, in their order: their scores or the error scoring raised.
_Results = list[Scores | BaseException]

PROBE_EVERY = 128


class MicroBatcher:
    def __init__(
        self,
        max_batch_rows: int = 256,
        max_delay: float = 0.003,
        observe_batch: Callable[[int, int], None] | None = None,
        *,
        observe_scores: Callable[[LoadedModel, Scores], None] | None = None,
        max_batch_values: int = 65536,
        inline_max_values: int = 32768,
        inline_max_seconds: float = 0.002,
        batch_thread: Executor | None = None,
    ) -> None:
        self.max_batch_rows = max_batch_rows
        self.max_batch_values = max_batch_values
        self.max_delay = max_delay
        self.inline_max_values = inline_max_values
        self.inline_max_seconds = inline_max_seconds
        self._batch_thread = batch_thread  # one thread; None: every batch on the event loop
        self._running = 0  # batches handed to the batch thread and not done
        # Per version, a running mean of the CPU seconds one row of its batches took (weak: a
        # retired version leaves with its last lease). Batches use single-threaded sessions,
        # so the scoring thread's CPU time is the batch's.
        self._row_seconds: weakref.WeakKeyDictionary[LoadedModel, float] = weakref.WeakKeyDictionary()
        self._observe_batch = observe_batch  # told (requests, rows) of every flushed batch
        self._observe_scores = observe_scores or _ignore  # told the scores of every scoring call
        self._pending: dict[tuple, _Batch] = {}
        self._company = 1.0  # running mean of requests that joined a waiting batch (start by waiting)
        self._batches = 0

    async def score(
        self, model: LoadedModel, rows: np.ndarray, routing_values: Sequence[float], threshold_percentile: float | None
    ) -> Scores:
        # Requests without routing values go to the catch-all group; they only batch with their own kind.
        key = (model, threshold_percentile, len(routing_values) > 0)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(rows, routing_values, loop.create_future())
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _Batch(waiting=[])
            self._batches += 1
            if self.max_delay > 0 and (self._company >= 0.5 or self._batches % PROBE_EVERY == 0):
                batch.waited = True
                loop.call_later(self.max_delay, self._flush, key, batch)
            else:
                loop.call_soon(self._flush, key, batch)
        batch.waiting.append(waiting)
        batch.rows += rows.shape[0]
        batch.values += rows.size
        if batch.rows >= self.max_batch_rows or batch.values >= self.max_batch_values:
            self._flush(key, batch)
        try:
            return await waiting.future
        except asyncio.CancelledError:
            # The call was cancelled (client gone, deadline passed): its rows leave a batch
            # that has not run yet, so nobody scores them.
            if self._pending.get(key) is batch:
                batch.waiting.remove(waiting)
                batch.rows -= rows.shape[0]
                batch.values -= rows.size
            raise

    def _flush(self, key: tuple, batch: _Batch) -> None:
        if self._pending.get(key) is not batch:
            return  # already flushed because it was full
        model, percentile, routed = key
        small = self._batch_thread is None or self._small(model, batch)
        full = batch.rows >= self.max_batch_rows or batch.values >= self.max_batch_values
        if batch.waiting and not small and not full and self._running:
            batch.held = True  # flushed when the batch thread is done (or when full)
            return
        del self._pending[key]
        waiting = batch.waiting  # no longer pending: nobody leaves it now
        if not waiting:
            return  # every caller of this batch was cancelled
        if self._observe_batch is not None:
            self._observe_batch(len(waiting), batch.rows)
        if batch.waited:
            self._company = 0.8 * self._company + 0.2 * min(len(waiting) - 1, 4)
        parts = [(w.rows, w.routing_values) for w in waiting]
        if small:
            start = time.thread_time()
            results, scored = _score_batch(model, parts, routed, percentile)
            self._timed(model, batch.rows, time.thread_time() - start)
            self._observe_all(model, scored)
            _deliver_all(waiting, results)
            return
        model.add_lease()  # released by the batch thread, whoever is still waiting
        self._running += 1
        future = asyncio.get_running_loop().run_in_executor(
            self._batch_thread, _score_batch_and_release, model, parts, routed, percentile
        )

        def done(future: asyncio.Future) -> None:
            self._running -= 1
            error = future.exception()
            if error is not None:
                _deliver_all(waiting, [error] * len(waiting))
            else:
                results, scored, seconds = future.result()
                self._timed(model, batch.rows, seconds)
                self._observe_all(model, scored)
                _deliver_all(waiting, results)
            if not self._running:
                for held_key, held in [(k, b) for k, b in self._pending.items() if b.held]:
                    self._flush(held_key, held)

        future.add_done_callback(done)

    def _observe_all(self, model: LoadedModel, scored: list[Scores]) -> None:
        for scores in scored:
            self._observe_scores(model, scores)

    def _small(self, model: LoadedModel, batch: _Batch) -> bool:
        """Whether the batch may run on the event loop (see module docstring)."""
        if batch.values > self.inline_max_values:
            return False
        row_seconds = self._row_seconds.get(model)
        return row_seconds is None or row_seconds * batch.rows <= self.inline_max_seconds

    def _timed(self, model: LoadedModel, rows: int, seconds: float) -> None:
        previous = self._row_seconds.get(model)
        now = seconds / rows
        self._row_seconds[model] = now if previous is None else 0.8 * previous + 0.2 * now


def _ignore(model: LoadedModel, scores: Scores) -> None:
    pass


def _score_batch(
    model: LoadedModel,
    parts: list[tuple[np.ndarray, Sequence[float]]],
    routed: bool,
    percentile: float | None,
) -> tuple[_Results, list[Scores]]:
    """Each part's scores: one call for the whole batch, or one per part when the batch fails
    on somebody's input; and the scores of each call that succeeded (the batch's metrics are
    recorded from these, once per call, on the event loop)."""
    if len(parts) > 1:
        rows = np.concatenate([r for r, _ in parts])
        routing: RoutingValues = ()
        if routed:
            routing = np.concatenate([np.broadcast_to(v, (r.shape[0],)) for r, v in parts])
        try:
            scores = model.score(rows, routing, threshold_percentile=percentile)
        except OddityError:
            pass  # somebody's input is at fault: score one by one below
        except Exception as exc:
            return [exc] * len(parts), []
        else:
            stops = np.cumsum([r.shape[0] for r, _ in parts]).tolist()
            return [scores.slice(start, stop) for start, stop in zip([0, *stops[:-1]], stops, strict=True)], [scores]
    results: _Results = []
    scored: list[Scores] = []
    for rows, routing_values in parts:
        try:
            scores = model.score(rows, routing_values, threshold_percentile=percentile)
        except Exception as exc:
            results.append(exc)
        else:
            scored.append(scores)
            results.append(scores)
    return results, scored


def _score_batch_and_release(
    model: LoadedModel,
    parts: list[tuple[np.ndarray, Sequence[float]]],
    routed: bool,
    percentile: float | None,
) -> tuple[_Results, list[Scores], float]:
    """On the batch thread: the batch (as `_score_batch`) and the CPU seconds it took, then the
    batch's own lease back. With the single-threaded sessions, as on the loop (with the multi-threaded ones the
    scoring threads oversubscribed 2 cores: health-check p99 26-55 ms instead of 14-15 ms in
    bench/health_under_load.py)."""
    try:
        start = time.thread_time()
        results, scored = _score_batch(model, parts, routed, percentile)
        return results, scored, time.thread_time() - start
    finally:
        model.release()


def _deliver_all(waiting: list[_Waiting], results: _Results) -> None:
    for w, result in zip(waiting, results, strict=True):
        _deliver(w, result)


def _deliver(waiting: _Waiting, result: Scores | BaseException) -> None:
    if waiting.future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(result, BaseException):
        waiting.future.set_exception(result)
    else:
        waiting.future.set_result(result)
