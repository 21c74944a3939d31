"""Micro-batching of small concurrent requests.

Concurrent requests for the same model version (and the same threshold percentile) are
coalesced into one ONNX Runtime call, so the per-call costs of ONNX Runtime and numpy (and
of reading the weights from memory, which dominates one-row calls) are paid once per batch
instead of once per request. Batches run on the event loop: a thread hop per batch costs
more than it saves at these sizes.

The first request of a batch schedules its flush; requests arriving before the flush join
it. Waiting pays only under load, so the batcher learns whether it does: a batch that
waited (up to `max_delay`, or until `max_batch_rows` rows joined) records how many requests
joined it. While waiting batches gather company the next batch waits too; once they stop
(a lone caller) batches flush on the next loop iteration and nothing waits, except one
probe every `PROBE_EVERY` batches that checks whether load has come back.

A batch that fails (say one request routes to a group without a model) is retried request
by request, so only the guilty request fails. A cancelled request leaves its batch before it
runs.

Reason to change: how concurrent small requests share ONNX Runtime calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from oddity.common.errors import OddityError
from oddity.detector.model import LoadedModel
from oddity.detector.routing import RoutingValues
from oddity.detector.scoring import Scores


@dataclass(slots=True)
class _Waiting:
    rows: np.ndarray
    routing_values: Sequence[float]
    future: asyncio.Future


@dataclass(slots=True)
class _Batch:
    waiting: list[_Waiting]
    rows: int = 0
    waited: bool = False


PROBE_EVERY = 128


class MicroBatcher:
    def __init__(
        self,
        max_batch_rows: int = 256,
        max_delay: float = 0.003,
        observe_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        self.max_batch_rows = max_batch_rows
        self.max_delay = max_delay
        self._observe_batch = observe_batch  # told (requests, rows) of every flushed batch
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
        if batch.rows >= self.max_batch_rows:
            self._flush(key, batch)
        try:
            return await waiting.future
        except asyncio.CancelledError:
            # The call was cancelled (client gone, deadline passed): its rows leave a batch
            # that has not run yet, so nobody scores them.
            if self._pending.get(key) is batch:
                batch.waiting.remove(waiting)
                batch.rows -= rows.shape[0]
            raise

    def _flush(self, key: tuple, batch: _Batch) -> None:
        if self._pending.get(key) is not batch:
            return  # already flushed because it was full
        del self._pending[key]
        model, percentile, routed = key
        waiting = batch.waiting
        if not waiting:
            return  # every caller of this batch was cancelled
        if self._observe_batch is not None:
            self._observe_batch(len(waiting), batch.rows)
        if batch.waited:
            self._company = 0.8 * self._company + 0.2 * min(len(waiting) - 1, 4)
        if len(waiting) > 1:
            rows = np.concatenate([w.rows for w in waiting])
            routing: RoutingValues = ()
            if routed:
                routing = np.concatenate([np.broadcast_to(w.routing_values, (w.rows.shape[0],)) for w in waiting])
            try:
                scores = model.score(rows, routing, threshold_percentile=percentile)
            except OddityError:
                pass  # somebody's input is at fault: score one by one below
            except Exception as exc:
                for w in waiting:
                    _deliver(w, exc)
                return
            else:
                start = 0
                for w in waiting:
                    stop = start + w.rows.shape[0]
                    _deliver(w, scores.slice(start, stop))
                    start = stop
                return
        for w in waiting:
            try:
                result: Scores | BaseException = model.score(w.rows, w.routing_values, threshold_percentile=percentile)
            except Exception as exc:
                result = exc
            _deliver(w, result)


def _deliver(waiting: _Waiting, result: Scores | BaseException) -> None:
    if waiting.future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(result, BaseException):
        waiting.future.set_exception(result)
    else:
        waiting.future.set_result(result)
