"""Prometheus metrics shared by the services. Metrics are declared against a registry that
is passed in (never the global one), so tests and several services in one process stay
isolated.

The /metrics endpoint binds 127.0.0.1 unless told otherwise and can require a bearer token
(read from a file, re-read when it changes; Prometheus sends it with `authorization:
credentials_file`).

Reason to change: the shared RPC metrics or the /metrics endpoint.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from oddity.common.token_files import TokenFile

# 100 µs .. 10 s: one-row calls sit in the sub-millisecond buckets.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def new_metrics_registry(*, process_metrics: bool = True) -> CollectorRegistry:
    """A fresh Prometheus registry; with process metrics (CPU, memory, fds, GC) as a service
    exposes them."""
    metrics_registry = CollectorRegistry(auto_describe=True)
    if process_metrics:
        ProcessCollector(registry=metrics_registry)
        PlatformCollector(registry=metrics_registry)
        GCCollector(registry=metrics_registry)
    return metrics_registry


class RpcMetrics:
    """Per-RPC metrics recorded by the server interceptor."""

    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        registry = metrics_registry
        self.requests = Counter(
            "oddity_grpc_requests",
            "gRPC requests handled, by final status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "oddity_grpc_request_duration_seconds",
            "Server-side handling time of gRPC requests.",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "oddity_grpc_requests_in_flight",
            "gRPC requests being handled.",
            ["service", "method"],
            registry=registry,
        )


@dataclass
class MetricsEndpoint:
    """The /metrics HTTP endpoint of one service."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _with_token(app: Callable[..., Iterable[bytes]], token_file: Path) -> Callable[..., Iterable[bytes]]:
    """The /metrics app, answering 401 unless the request carries the file's bearer token."""
    tokens = TokenFile(token_file, admin=False)

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        scheme, _, presented = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        presented_bytes = presented.strip().encode()
        known = tokens.tokens()
        if scheme.lower() == "bearer" and any(hmac.compare_digest(t, presented_bytes) for t, _ in known):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
        return [b"a valid bearer token is required\n"]

    return guarded


def start_metrics_endpoint(
    metrics_registry: CollectorRegistry, host: str, port: int, *, token_file: Path | None = None
) -> MetricsEndpoint:
    class Server(ThreadingWSGIServer):
        """A server class of its own: the address family is set per endpoint."""

    Server.address_family, addr = _get_best_family(host, port)
    app = make_wsgi_app(metrics_registry)
    if token_file is not None:
        app = _with_token(app, token_file)
    server = make_server(addr, port, app, Server, handler_class=_SilentHandler)
    # close() waits for the serving loop to notice: poll often enough that a stop takes
    # milliseconds, not the default half second.
    thread = Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="oddity-metrics", daemon=True)
    thread.start()
    return MetricsEndpoint(server=server, thread=thread)
