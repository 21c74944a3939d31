"""Structured logs: one JSON object per line on stdout, via structlog.

Request-scoped fields (request id, model, version) live in one context variable that the
RPC interceptor sets per call and the services annotate; every log line of that call
carries them. Standard-library loggers (grpc, ...) and Python warnings of libraries are
rendered the same way, so stdout holds nothing but JSON lines. Both write through one
`LineWriter`: each line in one write under one lock, so lines from two threads (a request's
and a library's) never run into each other. Long fields are cut (`cut_long_fields`): a name a
caller sent is repeated to 200 characters, any other text to `FIELD_LIMIT`.

Reason to change: the log format or the request-scoped fields.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

from oddity.common.errors import NAME_LIMIT, shown

# gRPC metadata key of the request id: taken from callers, passed on to every outbound call.
REQUEST_ID_KEY = "x-request-id"

# Fields that hold a name a caller may have sent, repeated up to NAME_LIMIT characters.
NAME_FIELDS = frozenset({"model", "dataset", "name", "path", "item", "item_id", "request_id"})
# Any other text field (a message, a traceback) is cut beyond this many characters.
FIELD_LIMIT = 16_000

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


def cut_long_fields(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Cut long text fields, so that a megabyte of model name never makes a megabyte of log line."""
    for key, value in event.items():
        if isinstance(value, str) and len(value) > NAME_LIMIT:
            event[key] = shown(value, NAME_LIMIT if key in NAME_FIELDS else FIELD_LIMIT)
    return event


class LineWriter:
    """Whole lines to standard output, one at a time. The stream is looked up at each write,
    as print() does: whoever replaced sys.stdout since (a test's capture) gets the lines."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def write_line(self, text: str) -> None:
        with self._lock:
            stream = sys.stdout
            stream.write(text + "\n")
            stream.flush()


class _LineLogger:
    """structlog's logger: every level writes the rendered line through the shared writer."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    log = debug = info = warn = warning = err = error = critical = exception = fatal = failure = msg


class _LineHandler(logging.Handler):
    """The standard library's records, rendered by the formatter, through the shared writer."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.write_line(self.format(record))
        except Exception:
            self.handleError(record)


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
    writer = LineWriter()
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, cut_long_fields, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=lambda *_args: _LineLogger(writer),
        cache_logger_on_first_use=True,
    )
    handler = _LineHandler(writer)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, cut_long_fields],
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
