"""Bearer-token authentication and the read/admin roles, checked by one interceptor.

Tokens come from files (e.g. mounted Kubernetes Secrets, see `oddity.common.token_files`),
re-read when they change, so tokens rotate without a restart. Read tokens may call the data
and status RPCs; admin tokens may call everything, including the RPCs that change what
serves (LoadModel, UnloadModel, Train, Rollback, SetThreshold). Health checks and server
reflection stay open for probes unless configured otherwise. Refusals say no more than
UNAUTHENTICATED or PERMISSION_DENIED, and come before a request's bytes are judged (an
undecodable request is refused innermost, see oddity.common.interceptors). Every admin call
leaves one audit log line, written by the server interceptor when the call ends: who
(`principal`), what (`rpc`, and the model or dataset and version the handler annotated once
it knew them), result (`code`).

Reason to change: who may call what.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from oddity.common.interceptors import HandlerInterceptor, split_method, with_behavior
from oddity.common.logging import annotate_request
from oddity.common.token_files import TokenFile

AUTHORIZATION_KEY = "authorization"
OPEN_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


# Who the call being handled authenticated as (set by AuthInterceptor before the handlers it
# wraps run; None without tokens): the rate limit's key, so a header alone never mints a bucket.
_caller: ContextVar[str | None] = ContextVar("oddity_caller", default=None)


def authenticated_caller() -> str | None:
    """The principal the current call authenticated as, or None (no tokens configured)."""
    return _caller.get()


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool


class Tokens:
    """Read and admin token files."""

    def __init__(self, read_files: Iterable[Path] = (), admin_files: Iterable[Path] = ()) -> None:
        self._files = [TokenFile(p, admin=False) for p in read_files] + [TokenFile(p, admin=True) for p in admin_files]

    def __bool__(self) -> bool:
        return bool(self._files)

    def principal(self, token: bytes) -> Principal | None:
        """Who holds this token; every token is compared in constant time, and all of them are."""
        found: Principal | None = None
        for file in self._files:
            for known, name in file.tokens():
                if hmac.compare_digest(known, token) and (found is None or file.admin):
                    found = Principal(name, file.admin)
        return found


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == AUTHORIZATION_KEY:
            text = value if isinstance(value, str) else value.decode(errors="replace")
            scheme, _, token = text.partition(" ")
            return token.strip().encode() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _streams(handler: Any) -> bool:
    return bool(handler.unary_stream or handler.stream_stream)


class AuthInterceptor(HandlerInterceptor):
    """Bearer tokens and roles for one service (see the module docstring)."""

    def __init__(self, tokens: Tokens, admin_methods: Iterable[str], *, open_health: bool = True) -> None:
        self.tokens = tokens
        self.admin_methods = frozenset(admin_methods)
        self.open_services = OPEN_SERVICES if open_health else ()

    def wrap(self, method: str, handler: Any) -> Any:
        service, name = split_method(method)
        if service in self.open_services:
            return handler
        admin_call = name in self.admin_methods
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(context, name, admin_call)
            return await behavior(request, context)

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._admit(context, name, admin_call)
            async for item in behavior(request, context):
                yield item

        return with_behavior(handler, stream if _streams(handler) else unary)

    async def _admit(self, context: grpc.aio.ServicerContext, method: str, admin_call: bool) -> None:
        """Mark the request's log fields with who called (and that it is audited), or abort
        the call with UNAUTHENTICATED / PERMISSION_DENIED."""
        audit = {"audit": True} if admin_call else {}
        token = _bearer(context.invocation_metadata())
        principal = self.tokens.principal(token) if token else None
        annotate_request(principal=principal.name if principal else "anonymous", **audit)
        _caller.set(principal.name if principal else None)
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
        elif admin_call and not principal.admin:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} needs an admin token")
