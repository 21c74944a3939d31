"""Interceptors tests add to real servers (innermost, after admission)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from oddity.common.interceptors import HandlerInterceptor, with_behavior


class RequestIds(HandlerInterceptor):
    """Records the x-request-id of every call to the methods `watched` accepts."""

    def __init__(self, watched: Callable[[str], bool]) -> None:
        self.watched = watched
        self.seen: list[str] = []

    def wrap(self, method: str, handler: Any) -> Any:
        if not self.watched(method) or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        async def recorded(request, context):
            self.seen.append(dict(context.invocation_metadata() or ()).get("x-request-id", ""))
            return await behavior(request, context)

        return with_behavior(handler, recorded)
