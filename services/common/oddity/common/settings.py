"""Settings shared by every service. Each service subclasses ServiceSettings with its own
env prefix (ODDITY_DETECTOR_, ...); values come from flags, then env vars, then defaults.

Reason to change: settings every service shares (network, lifecycle, logging).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict


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
    max_message_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request or response message; larger -> RESOURCE_EXHAUSTED."
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


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def load_settings(cls: type[SettingsT], argv: list[str] | None = None) -> SettingsT:
    """Build settings from command-line flags (kebab-case; default sys.argv), env vars and defaults."""
    return CliApp.run(cls, cli_args=sys.argv[1:] if argv is None else argv)
