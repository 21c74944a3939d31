"""One synchronous gRPC channel to one Oddity service, and what every call on it shares.

- Deadline: `timeout` seconds per call (streams that follow a job take their own).
- Retries: UNAVAILABLE (a server restarting, not ready yet, or a broken connection) is retried
  by gRPC itself with exponential backoff, from the same service config and channel options the
  services use between themselves (`oddity.common.clients.channel`).
- TLS: `tls=TlsFiles(...)`, or `ca_file` / `cert_file` / `key_file`; without a CA file the
  system's roots verify the server. The files are read when the client is made.
- Token: `token="..."`, or `token_file=` (read on every call, so a rotated file is picked up)
  sent as `authorization: Bearer <token>`.
- Request id: `request_id` (settable between calls) goes out as `x-request-id`, so the
  services' log lines of the call carry it.
- Errors: a failed call raises the domain error of `oddity.client.errors`.

These clients are for programs and people outside Oddity. The services call each other with
the asyncio clients of `oddity.common.clients`, which also reload rotated certificates.

Reason to change: how the SDK talks on the wire.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import grpc

from oddity.client.errors import rpc_error
from oddity.common.auth import AUTHORIZATION_KEY
from oddity.common.clients.channel import DEFAULT_MAX_MESSAGE_BYTES, RetryPolicy, channel_options
from oddity.common.errors import OddityError, Unavailable
from oddity.common.logging import REQUEST_ID_KEY
from oddity.common.tls import TlsFiles, channel_credentials
from oddity.common.token_files import read_token

DEFAULT_TIMEOUT_SECONDS = 30.0


def tls_files(
    tls: TlsFiles | None,
    ca_file: Path | str | None = None,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
) -> TlsFiles | None:
    """The TLS files of a client: `tls`, or one made of the paths (None: plaintext)."""
    paths = (ca_file, cert_file, key_file)
    if tls is not None and any(p is not None for p in paths):
        raise ValueError("give tls or ca_file/cert_file/key_file, not both")
    if tls is not None or all(p is None for p in paths):
        return tls
    return TlsFiles(
        cert_file=Path(cert_file) if cert_file is not None else None,
        key_file=Path(key_file) if key_file is not None else None,
        ca_file=Path(ca_file) if ca_file is not None else None,
    )


class ServiceClient:
    """Base of the SDK clients: one channel to `target`; a context manager that closes it."""

    #: Fully qualified gRPC service name, e.g. "oddity.v1.Detector" (the retry policy's scope).
    service: ClassVar[str] = ""
    #: Name used in error messages, e.g. "detector".
    label: ClassVar[str] = ""
    #: The generated stub class.
    stub_class: ClassVar[Any] = None

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        tls: TlsFiles | None = None,
        ca_file: Path | str | None = None,
        cert_file: Path | str | None = None,
        key_file: Path | str | None = None,
        token: str | None = None,
        token_file: Path | str | None = None,
        request_id: str | None = None,
        retry: RetryPolicy | None = None,
        wait_for_ready: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, Any]] = (),
        connect_timeout: float | None = None,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        self.target = target
        self.timeout = timeout
        self.request_id = request_id
        self.wait_for_ready = wait_for_ready
        self.tls = tls_files(tls, ca_file, cert_file, key_file)
        self._token = token
        self._token_file = Path(token_file) if token_file is not None else None
        channel_settings = [*channel_options(self.service, max_message_bytes, retry or RetryPolicy()), *options]
        if self.tls is None:
            self.channel = grpc.insecure_channel(target, options=channel_settings)
        else:
            self.channel = grpc.secure_channel(target, channel_credentials(self.tls), options=channel_settings)
        self._stub = self.stub_class(self.channel)
        # With connect_timeout, the first call first waits that long at most for a connection:
        # a service that refuses it (or fails the TLS handshake) or stays silent is reported at
        # once, not after every retry of the call (see _check_reachable).
        self._connect_timeout = connect_timeout

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        metadata = []
        if self.request_id:
            metadata.append((REQUEST_ID_KEY, self.request_id))
        token = self._token if self._token_file is None else read_token(self._token_file)
        if token:
            metadata.append((AUTHORIZATION_KEY, f"Bearer {token}"))
        return tuple(metadata)

    def _check_reachable(self) -> None:
        """Once, before the first call (with connect_timeout): Unavailable naming `oddity up`
        unless the channel connects within connect_timeout (or the call's deadline, if shorter)."""
        if self._connect_timeout is None or self.wait_for_ready:
            return
        wait, self._connect_timeout = min(self._connect_timeout, self.timeout), None
        settled = threading.Event()
        states: list[grpc.ChannelConnectivity] = []

        def seen(state: grpc.ChannelConnectivity) -> None:
            states.append(state)
            if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE):
                settled.set()

        self.channel.subscribe(seen, try_to_connect=True)
        try:
            settled.wait(wait)
        finally:
            self.channel.unsubscribe(seen)
        if states and states[-1] == grpc.ChannelConnectivity.READY:
            return
        why = "cannot connect" if settled.is_set() else f"no answer within {wait:g} s"
        raise Unavailable(
            f"{self.label} at {self.target}: {why}; `oddity up` starts the local services (no connection to "
            f"{self.target}: is the {self.label} running there, with TLS settings that match?)"
        )

    def _call(self, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """One unary call of the stub's `method`; raises the domain error when it fails."""
        self._check_reachable()
        try:
            return getattr(self._stub, method)(
                request,
                timeout=timeout if timeout is not None else self.timeout,
                metadata=self._metadata(),
                wait_for_ready=self.wait_for_ready,
            )
        except grpc.RpcError as exc:
            raise self._error(exc) from exc

    def _error(self, exc: grpc.RpcError) -> OddityError:
        """The domain error; a call that failed because nothing answers says so."""
        error = rpc_error(exc, self.label, self.target)
        code = exc.code() if isinstance(exc, grpc.Call) else None
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not self._connected():
            hint = f"no connection to {self.target}: is the {self.label} running there, with TLS settings that match?"
            return type(error)(f"{error.message} ({hint})")
        return error

    def _connected(self) -> bool:
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(timeout=0.05)
        except grpc.FutureTimeoutError:
            return False
        finally:
            ready.cancel()
        return True

    def _stream(self, method: str, request: Any, *, timeout: float | None) -> Iterator[Any]:
        """The responses of a server-streaming call; stopping early cancels the call."""
        self._check_reachable()
        call = getattr(self._stub, method)(
            request, timeout=timeout, metadata=self._metadata(), wait_for_ready=self.wait_for_ready
        )
        try:
            yield from call
        except grpc.RpcError as exc:
            raise self._error(exc) from exc
        finally:
            call.cancel()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"
