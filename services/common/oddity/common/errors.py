"""Domain errors. Services raise these; the gRPC layer maps each to its status code.

Messages are shown to clients, so they name the field, row or item at fault and never
carry internals.

Reason to change: a new kind of expected failure.
"""

from __future__ import annotations


class OddityError(Exception):
    """Base class: an expected failure with a message fit for the caller."""

    def __init__(self, message: str) -> None:
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


class AlreadyExists(OddityError):
    """The thing to create is already there (e.g. a job already running)."""


class Internal(OddityError):
    """Work failed on the server side for a reason worth telling the caller (e.g. a failed
    inference batch); unexpected bugs are not raised as this."""
