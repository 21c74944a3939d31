"""What a failed call raises: the domain errors of `oddity.common.errors`, seen by a caller
that talks to Oddity directly.

A status the services answer with for their own domain errors comes back as that same error
(NOT_FOUND -> NotFound, ALREADY_EXISTS -> AlreadyExists, ...), so `except NotFound` works
as it does inside the services. Every other status follows `oddity.common.status.remote_error`:
a service that is down, slow or failing is Unavailable (retrying later may work); refused
credentials (UNAUTHENTICATED, PERMISSION_DENIED) are FailedPrecondition. Messages name the
service, its address and the status: "detector at 10.0.0.5:50052: NOT_FOUND: model 'x' ...".

Reason to change: how statuses become exceptions for SDK callers.
"""

from __future__ import annotations

import grpc

from oddity.common.errors import OddityError
from oddity.common.status import STATUS_BY_ERROR, remote_error

_OWN_ERRORS: dict[grpc.StatusCode, type[OddityError]] = {code: error for error, code in STATUS_BY_ERROR}


def call_error(code: grpc.StatusCode, service: str, target: str, details: str) -> OddityError:
    """The exception for a call to `service` at `target` that ended with `code`."""
    message = f"{service} at {target}: {code.name}: {details or 'no details'}"
    error_type = _OWN_ERRORS.get(code)
    return error_type(message) if error_type is not None else remote_error(code, message)


def rpc_error(exc: grpc.RpcError, service: str, target: str) -> OddityError:
    """The exception for a failed gRPC call (unary or a stream)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return call_error(code, service, target, details or "")
