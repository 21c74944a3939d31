"""Server bootstrap shared by the services: gRPC server, health, reflection, interceptors,
/metrics and graceful shutdown.

A service plugs in as a `HostedApp` (DetectorApp, TrainerApp, EmbedderApp: wiring, background
work and readiness; the use cases live in each service's `*Service` class); the host owns
everything around it:

    host = ServiceHost(app, settings, metrics_registry=metrics_registry)
    await host.start()        # bind, serve liveness; the service reports readiness itself
    ...
    await host.stop()         # NOT_SERVING, drain in-flight RPCs within the grace period, release

`run_until_signal` runs one or more hosts until SIGTERM or SIGINT and stops them gracefully.
TLS comes from the settings' certificate files (or credentials passed in); extra
interceptors and the metrics registry are passed in, never hard-wired. Every call passes, in
order: the server interceptor (request id, logs, metrics, errors), tokens and roles when
configured, admission (drain, concurrency cap, per-client rate), then any extra interceptors.
They wrap each method's handler once as the services register (no per-call interceptor
pipeline: see oddity.common.interceptors).

Shutdown (SIGTERM): readiness goes NOT_SERVING, new calls get UNAVAILABLE (retryable, with
gRPC's retry pushback saying when) while the calls in progress finish within the grace period;
then, at a moment when no call is on its way, the server stops.

Reason to change: the lifecycle of a gRPC server (start, health, reflection, drain, stop).
"""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from oddity.common.auth import AuthInterceptor, Tokens
from oddity.common.interceptors import HandlerInterceptor, ServerInterceptor, WrappingRegistry
from oddity.common.limits import AdmissionInterceptor, RateLimiter
from oddity.common.logging import configure_logging, get_logger
from oddity.common.metrics import MetricsEndpoint, RpcMetrics, new_metrics_registry, start_metrics_endpoint
from oddity.common.settings import ServiceSettings, load_settings
from oddity.common.tls import server_credentials

log = get_logger("oddity.server")

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)

# Shutdown: the server stops once no call has been seen for DRAIN_QUIET_SECONDS (a busy
# client's next call follows its answer at once), plus DRAIN_LAG_FACTOR times the event loop's
# lag, measured every DRAIN_POLL_SECONDS while waiting.
DRAIN_QUIET_SECONDS = 0.05
DRAIN_LAG_FACTOR = 4
DRAIN_POLL_SECONDS = 0.01

LIVENESS = ""  # grpc.health.v1: the empty service name answers "is the process up".


class Readiness:
    """The service's readiness as seen by grpc.health.v1 (its own service name)."""

    def __init__(self, health: HealthServicer, service_name: str) -> None:
        self._health = health
        self._name = service_name
        self.ready = False

    async def set(self, ready: bool) -> None:
        if ready == self.ready:
            return
        self.ready = ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(self._name, status)
        log.info("readiness changed", grpc_service=self._name, ready=ready)

    async def set_part(self, part: str, ready: bool) -> None:
        """Readiness of one part of the service (e.g. one model), under "<service>/<part>", so a
        probe or a client can tell which part serves while the service as a whole is ready."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set(f"{self._name}/{part}", status)


class HandlerRegistry(Protocol):
    """Where services register their handlers: the two methods generated code calls."""

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None: ...

    def add_registered_method_handlers(self, service: str, method_handlers: dict) -> None: ...


class HostedApp(Protocol):
    """What a service plugs into the host."""

    #: Fully qualified gRPC service name, e.g. "oddity.v1.Detector"; also its readiness name.
    name: str
    #: Methods that change what serves: they need an admin token when tokens are configured.
    admin_methods: frozenset[str]
    # Optional: `other_pool_files`, the files of served services whose descriptors live in a
    # descriptor pool of their own (see _reflection_pool).

    def register(self, server: HandlerRegistry) -> None:
        """Add the servicer(s) to the server (e.g. with a generated add_*Servicer_to_server)."""

    async def start(self, readiness: Readiness) -> None:
        """Start background work; call readiness.set(True) once requests can be served."""

    async def stop(self) -> None:
        """Release resources; called after the server has drained."""


def _reflection_pool(services: Sequence[str], other_pool_files: Sequence[FileDescriptor]):
    """The pool reflection answers from: the default pool's, unless the app serves services whose
    descriptors live in a pool of their own (the detector's Open Inference Protocol, kept apart
    from tritonclient's same names); then one pool holding the files of both."""
    if not other_pool_files:
        return None
    pool, added = descriptor_pool.DescriptorPool(), set()

    def add(file: FileDescriptor) -> None:
        if file.name in added:
            return
        for dependency in file.dependencies:
            add(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        pool.Add(proto)
        added.add(file.name)

    for name in services:
        add(descriptor_pool.Default().FindServiceByName(name).file)
    for file in other_pool_files:
        add(file)
    return pool


def _connection_age(settings: ServiceSettings) -> list[tuple[str, object]]:
    """gRPC's server-side connection age (GOAWAY after max_connection_age_seconds)."""
    if settings.max_connection_age_seconds is None:
        return []
    return [
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_seconds * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.grace_period_seconds * 1000)),
    ]


class ServiceHost:
    """One gRPC server (plus /metrics) around one service."""

    def __init__(
        self,
        app: HostedApp,
        settings: ServiceSettings,
        *,
        metrics_registry: CollectorRegistry,
        interceptors: Sequence[HandlerInterceptor] = (),
        credentials: grpc.ServerCredentials | None = None,
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics_registry = metrics_registry
        tokens = Tokens(
            [settings.read_tokens_file] if settings.read_tokens_file else [],
            [settings.admin_tokens_file] if settings.admin_tokens_file else [],
        )
        self.admission = AdmissionInterceptor(
            settings.max_concurrent_rpcs,
            RateLimiter(settings.rate_limit_per_client, settings.rate_limit_burst)
            if settings.rate_limit_per_client
            else None,
        )
        self._interceptors: list[HandlerInterceptor] = [
            ServerInterceptor(RpcMetrics(metrics_registry), access_log=settings.access_log),
            *([AuthInterceptor(tokens, app.admin_methods, open_health=settings.auth_open_health)] if tokens else []),
            self.admission,
            *interceptors,
        ]
        tls = settings.tls()
        self._credentials = credentials or (server_credentials(tls) if tls.serves_tls else None)
        self._options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            # Fail loudly on a port already in use instead of silently sharing it.
            ("grpc.so_reuseport", 0),
            *_connection_age(settings),
            *options,
        ]
        self.server: grpc.aio.Server | None = None
        self.health = HealthServicer()
        self.readiness = Readiness(self.health, app.name)
        self.metrics: MetricsEndpoint | None = None
        self.port = 0
        self._stopped = asyncio.Event()

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    async def start(self) -> int:
        """Bind and start serving; returns the bound gRPC port."""
        settings = self.settings
        server = grpc.aio.server(options=self._options)
        registry = WrappingRegistry(server, self._interceptors)
        self.app.register(registry)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, registry)
        names = [self.app.name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
        files = getattr(self.app, "other_pool_files", ())
        names += [service.full_name for file in files for service in file.services_by_name.values()]
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names, pool=_reflection_pool(names[:3], files)), registry
        )
        target = f"{settings.host}:{settings.port}"
        if self._credentials is None:
            if not _loopback(settings.host):
                log.warning(
                    "serving plaintext gRPC beyond this machine; set tls_cert_file/tls_key_file or bind 127.0.0.1",
                    host=settings.host,
                )
            self.port = server.add_insecure_port(target)
        else:
            self.port = server.add_secure_port(target, self._credentials)
        if self.port == 0:
            raise RuntimeError(f"could not bind {target}")
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(self.app.name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        self.server = server
        if settings.metrics_port is not None:
            self.metrics = start_metrics_endpoint(
                self.metrics_registry,
                settings.metrics_host,
                settings.metrics_port,
                token_file=settings.metrics_token_file,
            )
            if not _loopback(settings.metrics_host) and settings.metrics_token_file is None:
                log.warning("serving /metrics beyond this machine without a token", host=settings.metrics_host)
        log.info(
            "serving",
            grpc_service=self.app.name,
            host=settings.host,
            port=self.port,
            tls=self._credentials is not None,
            mutual_tls=settings.tls_client_auth,
            tokens=settings.read_tokens_file is not None or settings.admin_tokens_file is not None,
            metrics_port=self.metrics.port if self.metrics else None,
        )
        await self.app.start(self.readiness)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Graceful stop: new RPCs get UNAVAILABLE while in-flight ones finish within the grace
        period, the server waits for a moment when no call is on its way, then stops and the
        service is released."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.settings.grace_period_seconds if grace is None else grace
        retry_after = self.settings.drain_retry_after_seconds
        # Stopping the gRPC server at once would answer the calls that arrive meanwhile with
        # CANCELLED, which clients do not retry: until the calls in progress are done, the
        # admission interceptor answers them UNAVAILABLE (from here, before an await lets one in).
        self.admission.start_draining(retry_after)
        log.info("stopping", grpc_service=self.app.name, grace_seconds=grace)
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            if not await self.admission.wait_idle(grace):
                log.warning("grace period over; cancelling the calls still running", calls=self.admission.active)
            if retry_after > 0:
                await self._wait_quiet(retry_after)
            await self.server.stop(max(0.0, deadline - loop.time()))
        try:
            await self.app.stop()
        finally:
            if self.metrics is not None:
                self.metrics.close()
            log.info("stopped", grpc_service=self.app.name)

    async def _wait_quiet(self, retry_after: float) -> None:
        """Wait until no call is on its way to the server. gRPC core answers CANCELLED to the
        calls that reach it in the moment of the final stop, before the server has taken them
        (grpc/grpc issue 41785), and clients do not retry CANCELLED. The calls refused so far
        retry within `retry_after`; those refused from now on are told to retry after the stop.
        On a loaded machine a call waits in gRPC core before the server sees it: the quiet
        margin grows with the event loop's lag, the stop moving at most half of `retry_after`
        past the plan, so the retries told to come after it still do."""
        planned = self.admission.quiet_from(DRAIN_QUIET_SECONDS)
        self.admission.retry_not_before(planned + retry_after)
        latest = planned + retry_after / 2
        lag = 0.0
        while True:
            now = time.monotonic()
            stop_at = min(latest, self.admission.quiet_from(DRAIN_QUIET_SECONDS + DRAIN_LAG_FACTOR * lag))
            if now >= stop_at:
                return
            step = min(stop_at - now, DRAIN_POLL_SECONDS)
            await asyncio.sleep(step)
            lag = max(lag, time.monotonic() - now - step)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def run_until_signal(hosts: Sequence[ServiceHost]) -> None:
    """Start the hosts, wait for SIGTERM/SIGINT, stop them gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[ServiceHost] = []
    try:
        for host in hosts:
            await host.start()
            started.append(host)
        await stop.wait()
        log.info("signal received; shutting down")
    finally:
        results = await asyncio.gather(*(host.stop() for host in reversed(started)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("stop failed", exc_info=result)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_service(
    make_app: Callable[[SettingsT, CollectorRegistry], HostedApp],
    settings_class: type[SettingsT],
    service_label: str,
    argv: list[str] | None = None,
) -> int:
    """A console script's whole body: settings from flags/env, JSON logs, one host, run
    until SIGTERM."""
    settings = load_settings(settings_class, argv)
    configure_logging(level=settings.log_level, json=settings.log_json, service=service_label)
    metrics_registry = new_metrics_registry()
    host = ServiceHost(make_app(settings, metrics_registry), settings, metrics_registry=metrics_registry)
    asyncio.run(run_until_signal([host]))
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
