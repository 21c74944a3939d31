"""The server interceptor: request id, logs, metrics and the error -> status-code mapping.

Every RPC passes through one wrapper that
  - takes the caller's `x-request-id` (or makes one) into the request's log context,
  - times the call and counts it by final status code, labelled with the service the method
    belongs to (health checks and reflection count apart from the service's own RPCs),
  - turns domain errors into their gRPC status with the error's message, and any other
    exception into INTERNAL with a fixed text, so no internals leak.
Handlers are wrapped once per method when services register (`WrappingRegistry`), not
intercepted per call: grpc.aio's interceptor pipeline costs tens of microseconds a call, a
large part of a one-row Detect. `HandlerInterceptor.wrap` is the one hook; the same objects
still work as grpc.aio interceptors.
A request whose bytes do not parse is refused with INVALID_ARGUMENT innermost, by the
registry, after every interceptor: tokens, roles and admission judge it like any other call
(no token is UNAUTHENTICATED whatever the bytes, and an admin call is audited).

Reason to change: what every incoming RPC gets (request ids, logs, metrics, status mapping),
or how wrappers are applied to handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from oddity.common import errors
from oddity.common.logging import REQUEST_ID_KEY, get_logger, start_request
from oddity.common.metrics import RpcMetrics
from oddity.common.status import status_for, trailers_for

log = get_logger("oddity.rpc")


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY:
            return value if isinstance(value, str) else value.decode(errors="replace")
    # A label for log lines, not a secret: the cheap generator (secrets costs a system call).
    return f"{random.getrandbits(64):016x}"


class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the call is answered
    INVALID_ARGUMENT instead of grpc's UNKNOWN with an internal exception text."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # DecodeError and friends
            return _Undecodable(exc)

    return deserialize


def _check_decoded(request: Any) -> None:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument(f"request is not a valid protobuf message: {request.error}")


def _decodes_requests(handler: Any) -> bool:
    """Whether the handler's single request is parsed by a deserializer that could fail."""
    return handler.request_deserializer is not None and not handler.request_streaming


def _refusing_undecodable(handler: Any) -> Any:
    """The handler, refusing a request that did not parse before it runs."""
    if not _decodes_requests(handler):
        return handler
    behavior = handler.unary_unary or handler.unary_stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _check_decoded(request)
        return await behavior(request, context)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        _check_decoded(request)
        async for item in behavior(request, context):
            yield item

    # Streaming handlers that write with context.write() are coroutines: they take the unary path.
    return with_behavior(handler, stream if inspect.isasyncgenfunction(behavior) else unary)


def _decoding_tolerantly(handler: Any) -> Any:
    """The handler, its requests parsed into `_Undecodable` instead of failing in grpc."""
    if not _decodes_requests(handler):
        return handler
    behavior = handler.unary_unary or handler.unary_stream
    return with_behavior(handler, behavior, _tolerant(handler.request_deserializer))


class HandlerInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the handler of a method once (`wrap`); as a grpc.aio interceptor it reuses the
    wrapped handler of each method, but the fast path is `WrappingRegistry`."""

    def wrap(self, method: str, handler: Any) -> Any:
        """The handler to serve `method` ("/package.Service/Method") with, given its own."""
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        cache: dict[str, tuple[Any, Any]] = self.__dict__.setdefault("_wrapped_by_method", {})
        return _wrapped_once(cache, handler_call_details.method, handler, self.wrap)


class WrappingRegistry:
    """Stands in for a grpc.aio.Server while services register (the generated
    `add_*Servicer_to_server` functions call these two methods): each handler is wrapped by
    the interceptors once, the first outermost, and handed to the server. Undecodable
    requests pass every interceptor and are refused just before the service's handler."""

    def __init__(self, server: grpc.aio.Server, interceptors: Sequence[HandlerInterceptor]) -> None:
        self._server = server
        self._interceptors = list(interceptors)

    def wrap(self, method: str, handler: Any) -> Any:
        handler = _refusing_undecodable(handler)
        for interceptor in reversed(self._interceptors):
            handler = interceptor.wrap(method, handler)
        return _decoding_tolerantly(handler)

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedGeneric(h, self.wrap) for h in generic_handlers))

    def add_registered_method_handlers(self, service: str, method_handlers: dict[str, Any]) -> None:
        wrapped = {name: self.wrap(f"/{service}/{name}", h) for name, h in method_handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)


class _WrappedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Callable[[str, Any], Any]) -> None:
        self._inner = inner
        self._wrap = wrap
        self._cache: dict[str, tuple[Any, Any]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        return _wrapped_once(self._cache, handler_call_details.method, handler, self._wrap)


def _wrapped_once(cache: dict[str, tuple[Any, Any]], method: str, handler: Any, wrap: Callable[[str, Any], Any]) -> Any:
    """`wrap(method, handler)`, made once per method and handler (None passes through)."""
    if handler is None:
        return None
    cached = cache.get(method)
    if cached is None or cached[0] is not handler:
        cached = cache[method] = (handler, wrap(method, handler))
    return cached[1]


def split_method(method: str) -> tuple[str, str]:
    """("package.Service", "Method") of "/package.Service/Method"."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


class _MethodMetrics:
    """One method's metric children, made when its handler is wrapped. The calls in flight
    are a plain count the gauge reads at scrape time: calls start and end on the event loop,
    so a lock per call (what Gauge.inc costs) buys nothing."""

    __slots__ = ("counters", "in_flight", "latency", "method", "requests", "service")

    def __init__(self, metrics: RpcMetrics, service: str, method: str) -> None:
        self.service, self.method = service, method
        self.requests = metrics.requests
        self.latency = metrics.latency.labels(service, method)
        self.counters: dict[grpc.StatusCode, Any] = {}
        self.in_flight = 0
        metrics.in_flight.labels(service, method).set_function(lambda: self.in_flight)

    def counter(self, code: grpc.StatusCode) -> Any:
        child = self.counters.get(code)
        if child is None:
            child = self.counters[code] = self.requests.labels(self.service, self.method, code.name)
        return child


class _Call:
    """Bookkeeping of one RPC: log context, timing, metrics, error mapping."""

    __slots__ = ("access_log", "code", "context", "fields", "metrics", "start")

    def __init__(self, metrics: _MethodMetrics, access_log: bool, context: grpc.aio.ServicerContext) -> None:
        self.metrics, self.access_log, self.context = metrics, access_log, context
        self.fields = start_request(request_id=_request_id(context), rpc=metrics.method)
        self.code = grpc.StatusCode.OK
        metrics.in_flight += 1
        self.start = time.perf_counter()

    async def fail(self, exc: BaseException) -> None:
        """Record the status for an exception and abort the call with it (unless it already ended).

        A cancelled call, or a server stream closed because its client stopped reading
        (GeneratorExit), is CANCELLED: normal client behaviour, not an error."""
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            self.code = grpc.StatusCode.CANCELLED
            return
        if isinstance(exc, grpc.aio.AbortError):
            self.code = self.context.code() or grpc.StatusCode.UNKNOWN
            return
        if isinstance(exc, errors.OddityError):
            self.code = status_for(exc)
            getattr(log, exc.log_level)("request failed", code=self.code.name, error=exc.message)
            await self.context.abort(self.code, exc.message, trailers_for(exc))
        self.code = grpc.StatusCode.INTERNAL
        log.error("unhandled error", exc_info=exc)
        await self.context.abort(
            self.code, f"internal error; see the server log for request id {self.fields['request_id']}"
        )

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.start
        metrics = self.metrics
        metrics.in_flight -= 1
        metrics.latency.observe(elapsed)
        metrics.counter(self.code).inc()
        if self.access_log:
            log.info("request", code=self.code.name, duration_ms=round(elapsed * 1000, 3))
        if self.fields.get("audit"):  # an admin call (oddity.common.auth): who, what, result
            log.info("audit", code=self.code.name)


class ServerInterceptor(HandlerInterceptor):
    """Wraps every handler of a server; see the module docstring."""

    def __init__(self, metrics: RpcMetrics, *, access_log: bool = False) -> None:
        self.metrics = metrics
        self.access_log = access_log
        self._methods: dict[tuple[str, str], _MethodMetrics] = {}

    def _method_metrics(self, service: str, method: str) -> _MethodMetrics:
        """One per method (a handler wrapped again, say by a grpc.aio interceptor, shares it)."""
        found = self._methods.get((service, method))
        if found is None:
            found = self._methods[(service, method)] = _MethodMetrics(self.metrics, service, method)
        return found

    def _wrap_stream(self, metrics: _MethodMetrics, behavior: Any) -> Callable[..., Any]:
        access_log = self.access_log

        async def wrapped(request, context):
            call = _Call(metrics, access_log, context)
            stream = behavior(request, context)
            try:
                async for item in stream:
                    yield item
            except BaseException as exc:
                await call.fail(exc)
                raise
            finally:
                try:
                    await stream.aclose()  # a client that stopped reading: end the handler's stream too
                finally:
                    call.finish()

        return wrapped

    def _wrap_unary(self, metrics: _MethodMetrics, behavior: Any) -> Callable[..., Any]:
        """Unary responses, and streaming handlers that write with context.write()."""
        access_log = self.access_log

        async def wrapped(request, context):
            call = _Call(metrics, access_log, context)
            try:
                return await behavior(request, context)
            except BaseException as exc:
                await call.fail(exc)
                raise
            finally:
                call.finish()

        return wrapped

    def wrap(self, method: str, handler: Any) -> Any:
        metrics = self._method_metrics(*split_method(method))
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        wrapped = (
            self._wrap_stream(metrics, behavior)
            if inspect.isasyncgenfunction(behavior)
            else self._wrap_unary(metrics, behavior)
        )
        return with_behavior(handler, wrapped)


def with_behavior(handler: Any, behavior: Callable[..., Any], deserializer: Any = None) -> Any:
    """A method handler of the same kind and serializers as `handler`, running `behavior`."""
    serializers = (deserializer or handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(behavior, *serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(behavior, *serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(behavior, *serializers)
    return grpc.stream_stream_rpc_method_handler(behavior, *serializers)
