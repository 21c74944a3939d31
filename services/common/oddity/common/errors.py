"""Domain errors. Services raise these; the gRPC layer maps each to its status code.

Messages are shown to clients, so they name the field, row or item at fault and never
carry internals. A message travels as the gRPC status, in the call's trailers, which clients
refuse above 8 KiB by default (16 KiB whatever their settings): a name a caller sent is
repeated through `shown`, and a whole message is cut at `MESSAGE_LIMIT_BYTES`, so an unknown
model of a megabyte's name is still NOT_FOUND.

Reason to change: a new kind of expected failure.
"""

from __future__ import annotations

#: Characters of a name (model, dataset, item id, path) that messages and log lines repeat.
NAME_LIMIT = 200
#: UTF-8 bytes of a message; trailers percent-encode every non-ASCII byte into three, and
#: 3 x 2,000 bytes stays below the 8 KiB clients accept.
MESSAGE_LIMIT_BYTES = 2_000


def shown(text: str, limit: int = NAME_LIMIT) -> str:
    """`text` as a message or log line repeats it: at most `limit` characters, then how long it was."""
    return text if len(text) <= limit else _cut(text[:limit], text)


def _bounded(message: str) -> str:
    encoded = message.encode(errors="replace")  # "replace": a file name decoded with surrogateescape
    if len(encoded) <= MESSAGE_LIMIT_BYTES:
        return message
    return _cut(encoded[:MESSAGE_LIMIT_BYTES].decode(errors="ignore"), message)


def _cut(head: str, text: str) -> str:
    return f"{head}…({len(text)} characters)"


class OddityError(Exception):
    """Base class: an expected failure with a message fit for the caller."""

    log_level = "warning"  # of the server's "request failed" line

    def __init__(self, message: str) -> None:
        message = _bounded(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(OddityError):
    """The request itself is wrong (shape, values, names, ranges)."""


class NotFound(OddityError):
    """A named model, version, dataset or job does not exist."""


class FailedPrecondition(OddityError):
    """The request is well formed but the system is not in a state to answer it."""


class ResourceExhausted(OddityError):
    """A size or concurrency limit was exceeded."""


class Unavailable(OddityError):
    """Not ready yet, or a dependency is down; retrying later may succeed."""


class StillLoading(Unavailable):
    """UNAVAILABLE while the service starts (a model loading, a repository not scanned yet):
    expected, so its log line is at debug level, not a warning."""

    log_level = "debug"


class AlreadyExists(OddityError):
    """The thing to create is already there (e.g. a job already running)."""


class Internal(OddityError):
    """Work failed on the server side for a reason worth telling the caller (e.g. a failed
    inference batch); unexpected bugs are not raised as this."""
