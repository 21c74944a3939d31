"""Admission control: how much work a server takes on, and when it stops taking any.

One interceptor decides, before a handler runs, whether the call is admitted:
  - while the server drains for shutdown, new calls get UNAVAILABLE (the code retry policies
    retry, so clients move to another replica or wait for the restart), never CANCELLED, with
    gRPC's retry pushback (`grpc-retry-pushback-ms`) saying when to retry: the server picks
    that time so that no retry lands in the moment of its final stop (see server.py);
  - beyond `max_concurrent` calls in progress, RESOURCE_EXHAUSTED at once: no queue grows
    behind a busy server;
  - with a per-client rate, a token bucket per client (the principal it authenticated as, or
    its address without tokens; at most MAX_TRACKED_CLIENTS buckets, least recently seen
    dropped first) refuses calls above the rate with RESOURCE_EXHAUSTED.
Health checks and reflection are always admitted: probes must see a busy server as alive.

Reason to change: the limits on a server's work and the drain on shutdown.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections import OrderedDict
from typing import Any

import grpc

from oddity.common.auth import OPEN_SERVICES, authenticated_caller
from oddity.common.interceptors import HandlerInterceptor, split_method, with_behavior

MAX_TRACKED_CLIENTS = 10_000  # buckets kept (least recently seen dropped first)
# gRPC's retry pushback (gRFC A6): a retrying client waits this many milliseconds before its next attempt.
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens = float(burst)
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RateLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, client: str) -> bool:
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > MAX_TRACKED_CLIENTS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return bucket.take()


def client_key(context: grpc.aio.ServicerContext) -> str:
    """Who is calling, for the rate limit: the principal the call authenticated as (with tokens
    configured), else the peer's address. Headers are never read here: a random authorization
    header must not mint a bucket of its own."""
    caller = authenticated_caller()
    if caller is not None:
        return "principal:" + caller
    peer = context.peer() or "unknown"  # "ipv4:127.0.0.1:53412": the port changes per connection
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


class AdmissionInterceptor(HandlerInterceptor):
    """See the module docstring. Runs on the server's event loop: counters need no lock."""

    def __init__(self, max_concurrent: int, rate_limiter: RateLimiter | None = None) -> None:
        self.max_concurrent = max_concurrent
        self.rate_limiter = rate_limiter
        self.active = 0
        self.draining = False
        self._retry_after = 0.0  # while draining: how long a refused client is told to wait
        self._retry_not_before = 0.0  # once the stop is planned: refused clients retry after it
        self._last_seen = 0.0  # when a call last arrived or finished (time.monotonic())
        self._last_busy = 0.0  # ... the last one while draining, before the stop was planned
        self._idle = asyncio.Event()
        self._idle.set()

    def start_draining(self, retry_after: float = 0.0) -> None:
        """Refuse new calls from now on, telling retrying clients to wait `retry_after` seconds."""
        self.draining = True
        self._retry_after = retry_after

    def quiet_from(self, margin: float) -> float:
        """The first moment (time.monotonic()) from which no call is expected: `margin` after
        the last call seen, and twice `retry_after` after the last one seen while draining
        before the stop was planned. Such a call was refused and retries `retry_after` later,
        or it finished and its client calls again at once; as long again lets that next call
        arrive on a loaded machine."""
        return max(time.monotonic(), self._last_seen + margin, self._last_busy + 2 * self._retry_after)

    def retry_not_before(self, when: float) -> None:
        """The stop is planned: calls refused from now on are told to retry at `when`
        (time.monotonic()), after it."""
        self._retry_not_before = when

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no admitted call is in progress (or the timeout passes); True if idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def wrap(self, method: str, handler: Any) -> Any:
        if split_method(method)[0] in OPEN_SERVICES:
            return handler
        return self._wrap(handler)

    def _refusal(self, context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
        now = self._seen()
        if self.draining:
            delay = max(self._retry_after, self._retry_not_before - now)
            if delay > 0:
                context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(math.ceil(delay * 1000))),))
            return grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry"
        if self.active >= self.max_concurrent:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server is busy ({self.max_concurrent} calls in progress)"
        if self.rate_limiter is not None and not self.rate_limiter.allow(client_key(context)):
            return (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {self.rate_limiter.rate:g} requests per second exceeded",
            )
        return None

    def _enter(self) -> None:
        self.active += 1
        self._idle.clear()

    def _seen(self) -> float:
        now = self._last_seen = time.monotonic()
        if self.draining and not self._retry_not_before:
            self._last_busy = now
        return now

    def _leave(self) -> None:
        self._seen()
        self.active -= 1
        if self.active == 0:
            self._idle.set()

    def _wrap(self, handler: Any) -> Any:
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = self._refusal(context)
            if refusal is not None:
                await context.abort(*refusal)
            self._enter()
            try:
                return await behavior(request, context)
            finally:
                self._leave()

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            refusal = self._refusal(context)
            if refusal is not None:
                await context.abort(*refusal)
            self._enter()
            try:
                async for item in behavior(request, context):
                    yield item
            finally:
                self._leave()

        # Streaming handlers that write with context.write() are coroutines: they take the unary path.
        return with_behavior(handler, stream if inspect.isasyncgenfunction(behavior) else unary)
