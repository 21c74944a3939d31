"""A channel to one remote Oddity service and the behaviour every outbound call shares.

- Retries: UNAVAILABLE (the server is restarting, not ready yet, or a connection broke) is
  retried by gRPC itself with exponential backoff, configured as the service config's
  retryPolicy; requests up to the message limit are buffered so large ones are retried too.
- Reconnects: after a server restart the channel reconnects within a second or two instead of
  gRPC's default backoff of up to two minutes.
- Replicas: a target naming several servers (`dns:///name:port`, an address list; see
  targets.py) spreads calls over them with gRPC's round_robin policy; a retried call goes to
  another ready server.
- Deadlines on every call; `wait_for_ready` callers (batch work such as training) wait out a
  server that is down until the deadline, request-path callers fail fast after the retries.
- Errors: a failed call raises the domain error of `oddity.common.status.remote_error`, with a
  message that names the remote service.
- Request ids: the current request's id (or the one given) goes out as `x-request-id`.
- Tokens: with a token file, every call carries `authorization: Bearer <token>`.
- TLS: with TLS files, the channel verifies the server with the CA and presents this
  service's certificate; rotated files give a new channel for later calls (checked at most
  once a second, by content), while calls on the old one finish. A call that fails
  UNAVAILABLE or DEADLINE_EXCEEDED while the channel is not connected says why the TLS
  handshake fails, when it does (gRPC itself only says the server is unavailable).

Reason to change: how Oddity services talk to each other on the wire.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from oddity.common.auth import AUTHORIZATION_KEY
from oddity.common.clients.targets import first_host_port, grpc_target
from oddity.common.logging import REQUEST_ID_KEY, current_request_id, get_logger
from oddity.common.status import remote_error
from oddity.common.tls import TlsFiles, channel_credentials, handshake_failure
from oddity.common.token_files import read_token
from oddity.common.watched_files import CHECK_SECONDS, Contents

log = get_logger("oddity.clients")

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
OLD_CHANNEL_GRACE_SECONDS = 60.0  # calls on a replaced channel get this long to finish
DNS_MIN_SECONDS_BETWEEN_RESOLUTIONS = 2


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retryPolicy for UNAVAILABLE. gRPC caps attempts at 5; the n-th retry waits a random
    time up to min(initial * multiplier**(n-1), max)."""

    max_attempts: int = 5
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 4.0
    backoff_multiplier: float = 2.0

    def service_config(self, service: str, *, balanced: bool = False) -> str:
        """The service config; `balanced`: each call goes to the next ready address (round_robin)
        instead of all to the first one that connects (gRPC's default, pick_first)."""
        return json.dumps(
            {
                **({"loadBalancingConfig": [{"round_robin": {}}]} if balanced else {}),
                "methodConfig": [
                    {
                        "name": [{"service": service}],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": f"{self.initial_backoff_seconds}s",
                            "maxBackoff": f"{self.max_backoff_seconds}s",
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ],
            }
        )


def channel_options(
    service: str, max_message_bytes: int, retry: RetryPolicy, *, balanced: bool = False
) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry.service_config(service, balanced=balanced)),
        # Only requests that fit the retry buffer are retried (default 256 KiB: one batch of images).
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
        # A spread target's name is resolved again when a connection closes (a replica gone, a
        # server's max connection age): within 2 s rather than gRPC's default floor of 30 s.
        *(
            [("grpc.dns_min_time_between_resolutions_ms", DNS_MIN_SECONDS_BETWEEN_RESOLUTIONS * 1000)]
            if balanced
            else []
        ),
    ]


class RemoteService:
    """Base of the clients: one grpc.aio channel to `target` (an address setting: one address,
    `dns:///name:port` or an address list, see targets.py), created on the running event loop.
    Subclasses name their stub class; `self._stub` always belongs to the current channel."""

    #: Fully qualified gRPC service name, e.g. "oddity.v1.Embedder".
    service = ""
    #: Name used in error messages, e.g. "embedder".
    label = ""
    #: The generated stub class, e.g. embedder_pb2_grpc.EmbedderStub.
    stub_class: Any = None

    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        wait_for_ready: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retry: RetryPolicy | None = None,
        tls: TlsFiles | None = None,
        token_file: Path | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.target = target  # as configured, for messages
        self._grpc_target = grpc_target(target)
        self.token_file = token_file
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self.tls = tls if tls is not None and tls.calls_tls else None
        self._options = [
            *channel_options(
                self.service, max_message_bytes, retry or RetryPolicy(), balanced=self._grpc_target.balanced
            ),
            *options,
        ]
        self._tls_watch = self.tls.watch() if self.tls else None
        self._handshake_check: tuple[float, asyncio.Future[str | None]] | None = None
        self._retiring: set[asyncio.Task] = set()
        self.channel = self._new_channel(self._tls_watch.changed() if self._tls_watch else None)
        self._stub = self.stub_class(self.channel)

    def _new_channel(self, tls_contents: Contents | None) -> grpc.aio.Channel:
        if self.tls is None:
            return grpc.aio.insecure_channel(self._grpc_target.uri, options=self._options)
        credentials = channel_credentials(self.tls, tls_contents)
        return grpc.aio.secure_channel(self._grpc_target.uri, credentials, options=self._options)

    def _rotate_if_changed(self) -> None:
        """A new channel when the certificate files changed; the old one closes after its calls."""
        if self._tls_watch is None:
            return
        try:
            contents = self._tls_watch.changed()
            if contents is None:
                return
            channel = self._new_channel(contents)
        except (OSError, ValueError) as exc:  # a half-written pair: keep the old channel until the files change
            log.warning("new certificate files not usable yet", target=self.target, error=str(exc))
            return
        old, self.channel, self._stub = self.channel, channel, self.stub_class(channel)
        task = asyncio.create_task(old.close(grace=OLD_CHANNEL_GRACE_SECONDS))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info("client certificates reloaded", target=self.target)

    async def _call(self, method: str, request: Any, *, timeout: float | None = None, request_id: str | None = None):
        """Call one unary method of the stub by name; raises the domain error for a failed call."""
        self._rotate_if_changed()
        rpc = getattr(self._stub, method)
        request_id = request_id or current_request_id()
        metadata = [(REQUEST_ID_KEY, request_id)] if request_id else []
        if self.token_file is not None:  # read per call: a rotated Secret is picked up at once
            metadata.append((AUTHORIZATION_KEY, f"Bearer {read_token(self.token_file)}"))
        try:
            return await rpc(
                request,
                timeout=timeout or self.timeout,
                metadata=tuple(metadata) or None,
                wait_for_ready=self.wait_for_ready,
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            details = exc.details()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                failure = await self._handshake_failure()
                if failure is not None:
                    details = f"{details}; TLS handshake failure: {failure}"
            message = f"{self.label} at {self.target}: {code.name}: {details}"
            raise remote_error(code, message, exc.trailing_metadata()) from exc

    async def _handshake_failure(self) -> str | None:
        """Why TLS handshakes with the server fail, when the channel is not connected; one check
        a second at most, shared by the calls that fail meanwhile."""
        if self.tls is None or self.channel.get_state() == grpc.ChannelConnectivity.READY:
            return None
        address = first_host_port(self.target)
        if address is None:
            return None
        now = time.monotonic()
        if self._handshake_check is None or now - self._handshake_check[0] >= CHECK_SECONDS:
            check = asyncio.ensure_future(asyncio.to_thread(handshake_failure, self.tls, *address))
            self._handshake_check = (now, check)
        return await asyncio.shield(self._handshake_check[1])

    async def close(self) -> None:
        await self.channel.close()
        for task in list(self._retiring):
            task.cancel()
