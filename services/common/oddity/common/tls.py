"""TLS and mutual TLS from certificate files, re-read when the files change; why a handshake fails.

A service has one certificate (chain + key, PEM) that it serves on its gRPC port and presents
as a client certificate to the Oddity services it calls, and one CA bundle that verifies the
services it calls and, with client authentication on, its own clients. Files are watched by
content (watched_files.py: looked at once a second, compared by hash), so a rotation
(cert-manager swapping a mounted Secret, or a file replaced by hand, `cp -p` too) is picked up
without a restart:

- servers: gRPC asks for the certificate configuration on every new connection; a changed
  pair is read, checked (the key matches the certificate) and used from then on;
- clients: a changed pair or CA gives the client a new channel for later calls, while calls
  on the old channel finish.

A half-written pair (key and certificate that do not match yet) is not used: the previous one
keeps serving, with one warning per change of the files (not one per connection).

gRPC tells a client whose handshakes fail only that the server is unavailable or the deadline
passed; `handshake_failure` makes one handshake with the same files to say why.

Reason to change: how certificates are loaded, rotated and checked.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from oddity.common.logging import get_logger
from oddity.common.watched_files import Contents, WatchedFiles, read_files

log = get_logger("oddity.tls")


@dataclass(frozen=True)
class TlsFiles:
    """Where one service's TLS material lives."""

    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    #: Servers require a client certificate signed by the CA (mutual TLS).
    client_auth: bool = False

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.client_auth and (self.ca_file is None or self.cert_file is None):
            raise ValueError("tls_client_auth needs tls_ca_file (to verify clients) and a certificate to serve")

    @property
    def serves_tls(self) -> bool:
        return self.cert_file is not None

    @property
    def calls_tls(self) -> bool:
        """Calls to other Oddity services use TLS when a CA to verify them is configured."""
        return self.ca_file is not None

    @property
    def paths(self) -> tuple[Path | None, Path | None, Path | None]:
        return self.cert_file, self.key_file, self.ca_file

    def watch(self) -> WatchedFiles:
        """A watch on the three files (see `WatchedFiles.changed`)."""
        return WatchedFiles(*self.paths)


@dataclass(frozen=True)
class _Material:
    cert: bytes | None
    key: bytes | None
    ca: bytes | None


def _material(files: TlsFiles, contents: Contents) -> _Material:
    """The material of `contents` (as read from `files`); OSError for a configured file that is
    missing, ValueError when the key does not belong to the certificate or the files changed
    while they were checked."""
    for path, content in zip(files.paths, contents, strict=True):
        if path is not None and content is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    cert, key, ca = contents
    if files.cert_file is not None and files.key_file is not None:
        try:  # ssl reads files only: the check reads them again, and they must still be what was read
            ssl.create_default_context().load_cert_chain(files.cert_file, files.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"{files.cert_file} and {files.key_file} are not a certificate and its key: {exc}"
            ) from exc
        if read_files(files.cert_file, files.key_file) != (cert, key):
            raise ValueError(f"{files.cert_file} and {files.key_file} changed while they were read")
    return _Material(cert, key, ca)


def _server_configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
    assert material.cert is not None and material.key is not None
    return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.ca)


class _ServerCertificates:
    """The fetcher gRPC calls on every new connection: None (unchanged) or a new configuration."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._watch = files.watch()
        contents = self._watch.changed()
        assert contents is not None  # the first look hands the files out
        self.initial = _server_configuration(_material(files, contents))

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                contents = self._watch.changed()
                if contents is None:
                    return None
                configuration = _server_configuration(_material(self.files, contents))
            except (OSError, ValueError) as exc:
                log.warning("new certificate files not usable yet; serving the previous ones", error=str(exc))
                return None
            log.info("server certificate reloaded", cert_file=str(self.files.cert_file))
            return configuration


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that pick up rotated files on the next connection."""
    fetcher = _ServerCertificates(files)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial,
        fetcher,  # type: ignore[arg-type]  # gRPC documents None as "unchanged"; the stubs do not
        require_client_authentication=files.client_auth,
    )


def channel_credentials(files: TlsFiles, contents: Contents | None = None) -> grpc.ChannelCredentials:
    """Client credentials of the files' `contents` (default: as they are now): verify servers
    with the CA and present this service's certificate (for servers that ask for one)."""
    material = _material(files, read_files(*files.paths) if contents is None else contents)
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )


def handshake_failure(files: TlsFiles, host: str, port: int, timeout: float = 3.0) -> str | None:
    """Why a TLS handshake with the server at host:port fails with these files, in words; None
    when it succeeds or the server cannot be reached at all (not a TLS matter). Blocking."""
    try:
        context = ssl.create_default_context(cafile=files.ca_file)
        if files.cert_file is not None and files.key_file is not None:
            context.load_cert_chain(files.cert_file, files.key_file)
    except (ssl.SSLError, OSError) as exc:
        return f"this service's TLS files cannot be used: {exc}"
    context.set_alpn_protocols(["h2"])
    # TLS 1.2: a server that refuses this service's certificate does so within the handshake
    # (with TLS 1.3, after the client has finished it).
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        with context.wrap_socket(raw, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        if "mismatch" in exc.verify_message.lower():
            return f"the server's certificate is not valid for the name dialled, {host} ({exc.verify_message})"
        return f"the server's certificate is not trusted by the CA file {files.ca_file} ({exc.verify_message})"
    except (ssl.SSLEOFError, ConnectionResetError):
        # The server's certificate was verified, then the server hung up: it refused this
        # service's certificate (gRPC servers close without an alert).
        if files.cert_file is None:
            return "the server ended the handshake: it requires a client certificate, and none is configured"
        return (
            f"the server ended the handshake after this service's certificate {files.cert_file} was sent: "
            "it is likely not signed by a CA the server trusts"
        )
    except ssl.SSLError as exc:
        return f"{exc.reason or exc}"
    except OSError:  # a timeout: a server that does not speak, not a TLS matter
        return None
    finally:
        raw.close()
