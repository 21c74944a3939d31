"""TLS and mutual TLS from certificate files, re-read when the files change.

A service has one certificate (chain + key, PEM) that it serves on its gRPC port and presents
as a client certificate to the Oddity services it calls, and one CA bundle that verifies the
services it calls and, with client authentication on, its own clients. Files are watched by
size and mtime, so a rotation (cert-manager swapping a mounted Secret, or a file replaced by
hand) is picked up without a restart:

- servers: gRPC asks for the certificate configuration on every new connection; a changed
  pair is read, checked (the key matches the certificate) and used from then on;
- clients: a changed pair or CA gives the client a new channel for later calls, while calls
  on the old channel finish.

A half-written pair (key and certificate that do not match yet) is not used: the previous one
keeps serving and the change is tried again on the next connection.

Reason to change: how certificates are loaded and rotated.
"""

from __future__ import annotations

import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from oddity.common.logging import get_logger

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

    def signature(self) -> tuple[tuple[int, int] | None, ...]:
        return tuple(_stat(path) for path in (self.cert_file, self.key_file, self.ca_file))


def _stat(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        stat = os.stat(path)  # follows the ..data symlink of a mounted Secret
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class _Material:
    cert: bytes | None
    key: bytes | None
    ca: bytes | None


def _read(files: TlsFiles) -> _Material:
    """Read the files; raises ValueError when the key does not belong to the certificate."""
    cert = files.cert_file.read_bytes() if files.cert_file else None
    key = files.key_file.read_bytes() if files.key_file else None
    ca = files.ca_file.read_bytes() if files.ca_file else None
    if files.cert_file is not None and files.key_file is not None:
        try:
            ssl.create_default_context().load_cert_chain(files.cert_file, files.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(
                f"{files.cert_file} and {files.key_file} are not a certificate and its key: {exc}"
            ) from exc
    return _Material(cert, key, ca)


class _ServerCertificates:
    """The fetcher gRPC calls on every new connection: None (unchanged) or a new configuration."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._signature = files.signature()
        self.initial = self._configuration(_read(files))

    def _configuration(self, material: _Material) -> grpc.ServerCertificateConfiguration:
        assert material.cert is not None and material.key is not None
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        signature = self.files.signature()
        if signature == self._signature:
            return None
        with self._lock:
            if signature == self._signature:
                return None
            try:
                configuration = self._configuration(_read(self.files))
            except (OSError, ValueError) as exc:
                log.warning("new certificate files not usable yet; serving the previous ones", error=str(exc))
                return None
            self._signature = signature
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


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Client credentials as the files are now: verify servers with the CA and present this
    service's certificate (for servers that ask for one)."""
    material = _read(files)
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )
