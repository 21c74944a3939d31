"""Prometheus metrics shared by the services. Metrics are declared against a registry that
is passed in (never the global one), so tests and several services in one process stay
isolated.

Reason to change: the shared RPC metrics or the /metrics endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

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


def start_metrics_endpoint(metrics_registry: CollectorRegistry, host: str, port: int) -> MetricsEndpoint:
    server, thread = start_http_server(port, addr=host, registry=metrics_registry)
    return MetricsEndpoint(server=server, thread=thread)
