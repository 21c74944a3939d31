"""Structured logs: one JSON object per line on stdout, via structlog.

Request-scoped fields (request id, model, version) live in one context variable that the
RPC interceptor sets per call and the services annotate; every log line of that call
carries them. Standard-library loggers (grpc, ...) and Python warnings of libraries are
rendered the same way, so stdout holds nothing but JSON lines.

Reason to change: the log format or the request-scoped fields.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import structlog

# gRPC metadata key of the request id: taken from callers, passed on to every outbound call.
REQUEST_ID_KEY = "x-request-id"

_request_fields: ContextVar[dict[str, Any] | None] = ContextVar("oddity_request_fields", default=None)


def start_request(**fields: Any) -> dict[str, Any]:
    """Begin a request's log context (called by the interceptor, once per RPC)."""
    current = dict(fields)
    _request_fields.set(current)
    return current


def current_request_id() -> str | None:
    """The request id of the call being handled, if any (to pass on to outbound calls)."""
    fields = _request_fields.get()
    return fields.get("request_id") if fields else None


def annotate_request(**fields: Any) -> None:
    """Add fields (e.g. model, version) to the current request's log lines."""
    current = _request_fields.get()
    if current is not None:
        current.update(fields)


def _merge_request_fields(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    fields = _request_fields.get()
    if fields:
        for key, value in fields.items():
            event.setdefault(key, value)
    return event


def configure_logging(*, level: str = "info", json: bool = True, service: str | None = None) -> None:
    """Configure structlog and the standard library once per process."""
    level_no = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _merge_request_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if service:
        shared.insert(0, _add_service(service))
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level_no, logging.INFO))
    logging.captureWarnings(True)  # warnings.warn() of libraries -> the py.warnings logger -> JSON
    # One line per batch of file events is noise at info level.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def _add_service(service: str):
    def add(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service)
        return event

    return add


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name) if name else structlog.get_logger()
