"""Settings shared by every service. Each service subclasses ServiceSettings with its own
env prefix (ODDITY_DETECTOR_, ...); values come from flags, then env vars, then defaults.

Reason to change: settings every service shares (network, lifecycle, logging).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from oddity.common.tls import TlsFiles


class ServiceSettings(BaseSettings):
    """Network, lifecycle and logging settings common to all services."""

    model_config = SettingsConfigDict(
        env_prefix="ODDITY_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        extra="ignore",
    )

    host: str = Field(
        "127.0.0.1",
        description="Address the gRPC server binds to (0.0.0.0: every interface; in plaintext that logs a warning).",
    )
    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged at start).")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus /metrics endpoint.")
    metrics_port: int | None = Field(
        9100, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; unset to disable."
    )
    grace_period_seconds: float = Field(
        10.0, ge=0, description="On SIGTERM, how long in-flight requests may run before the server stops."
    )
    drain_retry_after_seconds: float = Field(
        0.25,
        ge=0,
        description="On SIGTERM, calls refused while the server drains tell their clients' gRPC retry policy to "
        "retry after this long. Once the calls in progress are done, the server stops at a moment when no call is "
        "on its way (gRPC would answer it CANCELLED): up to 2.5 times this long later, with the calls refused by "
        "then told to retry after the stop. 0: stop as soon as the calls in progress are done.",
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request or response message; larger -> RESOURCE_EXHAUSTED."
    )
    max_connection_age_seconds: float | None = Field(
        None,
        gt=0,
        description="Close each client connection after this long (its calls in flight get grace_period_seconds "
        "to finish), so clients that spread calls over a DNS name (dns:///) resolve it again and find replicas "
        "added since. Unset: connections stay open.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Lowest level logged.")
    log_json: bool = Field(True, description="JSON log lines (false: human-readable console lines).")
    access_log: bool = Field(False, description="Log every RPC at info level (errors are always logged).")
    read_tokens_file: Path | None = Field(
        None,
        description="File of bearer tokens that may call the data and status RPCs, one `name:token` per line "
        "(re-read when it changes). With a tokens file set, every call needs a token.",
    )
    admin_tokens_file: Path | None = Field(
        None, description="File of bearer tokens that may also call the admin RPCs (load, unload, train, ...)."
    )
    auth_open_health: bool = Field(
        True, description="Health checks and reflection need no token (for probes and grpcurl)."
    )
    tls_cert_file: Path | None = Field(
        None,
        description="This service's certificate chain (PEM): served on the gRPC port and presented to the "
        "Oddity services it calls. Re-read when it changes.",
    )
    tls_key_file: Path | None = Field(None, description="The private key of tls_cert_file (PEM).")
    tls_ca_file: Path | None = Field(
        None,
        description="CA bundle (PEM) of the Oddity services: with it, calls to other services use TLS verified "
        "against it, and with tls_client_auth it verifies this service's clients.",
    )
    tls_client_auth: bool = Field(
        False, description="Mutual TLS: clients must present a certificate signed by tls_ca_file."
    )
    metrics_token_file: Path | None = Field(
        None,
        description="File holding the bearer token /metrics requires (re-read when it changes); unset: no token.",
    )
    max_concurrent_rpcs: int = Field(
        256,
        ge=1,
        description="RPCs handled at once (health checks and reflection not counted); more get "
        "RESOURCE_EXHAUSTED at once instead of queueing.",
    )
    rate_limit_per_client: float | None = Field(
        None,
        gt=0,
        description="Requests per second each client (token name, or peer address without tokens) may make; "
        "more get RESOURCE_EXHAUSTED. Unset: no limit.",
    )
    rate_limit_burst: int = Field(
        100, ge=1, description="Requests a client may make at once above its rate before the limit applies."
    )

    @model_validator(mode="after")
    def _tls_consistent(self) -> ServiceSettings:
        self.tls()  # raises on a half-configured pair or mutual TLS without a CA
        return self

    def tls(self) -> TlsFiles:
        return TlsFiles(self.tls_cert_file, self.tls_key_file, self.tls_ca_file, self.tls_client_auth)


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT], argv: list[str] | None = None) -> SettingsT:
    """Build settings from command-line flags (kebab-case; default sys.argv), env vars and defaults."""
    return CliApp.run(cls, cli_args=sys.argv[1:] if argv is None else argv)
