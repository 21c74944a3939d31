"""The one table between domain errors and gRPC status codes, both ways: what this service
answers for an error it raises (the server interceptor), and what it raises when a service
it calls answers with a status (the clients).

Reason to change: the error model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from oddity.common import errors

STATUS_BY_ERROR: tuple[tuple[type[errors.OddityError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.Internal, grpc.StatusCode.INTERNAL),
)

# A dependency's answer, seen from the service that called it: the caller's own mistakes pass
# through (a bad image stays INVALID_ARGUMENT); a dependency that is down, slow or failing is
# UNAVAILABLE (retrying later may work); one that cannot do what it is asked as configured
# (unknown model, refused credentials) is FAILED_PRECONDITION.
_REMOTE_ERRORS: dict[grpc.StatusCode, type[errors.OddityError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.CANCELLED: errors.Unavailable,
    grpc.StatusCode.ABORTED: errors.Unavailable,
    grpc.StatusCode.INTERNAL: errors.Unavailable,
    grpc.StatusCode.UNKNOWN: errors.Unavailable,
    grpc.StatusCode.DATA_LOSS: errors.Unavailable,
}


def status_for(error: errors.OddityError) -> grpc.StatusCode:
    for error_type, code in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.UNKNOWN


# Trailing metadata of an UNAVAILABLE that means "up, still starting" (errors.StillLoading),
# so a caller can wait for a loading service longer than for one that is not there.
STATE_KEY, LOADING = "oddity-state", "loading"


def trailers_for(error: errors.OddityError) -> tuple[tuple[str, str], ...]:
    """What the server sends beside the status of `error`."""
    return ((STATE_KEY, LOADING),) if isinstance(error, errors.StillLoading) else ()


def remote_error(
    code: grpc.StatusCode, message: str, trailers: Iterable[tuple[str, Any]] | None = ()
) -> errors.OddityError:
    """The domain error for a status a called service answered with (and its trailers)."""
    if code == grpc.StatusCode.UNAVAILABLE and (STATE_KEY, LOADING) in tuple(trailers or ()):
        return errors.StillLoading(message)
    return _REMOTE_ERRORS.get(code, errors.FailedPrecondition)(message)
