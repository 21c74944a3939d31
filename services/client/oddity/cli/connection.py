"""The options that say how a command reaches its service, and the client made from them.

Every command that calls a service takes, after its own options:

    --detector / --trainer / --embedder HOST:PORT   (ODDITY_DETECTOR_TARGET, ..._TRAINER_..., ..._EMBEDDER_...)
    --tls-ca-file, --tls-cert-file, --tls-key-file  (ODDITY_TLS_CA_FILE, ODDITY_TLS_CERT_FILE, ODDITY_TLS_KEY_FILE)
    --token-file                                    (ODDITY_TOKEN_FILE)
    --timeout SECONDS                               (ODDITY_TIMEOUT)

`@connects("detector")` adds these options to a command's signature (so typer shows and parses
them like the command's own) and calls the command with `client=` an open SDK client, closed
when the command returns. Options win over env vars, env vars over defaults.

Reason to change: how the command line finds and authenticates to the services.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from oddity.client import DetectorClient, EmbedderClient, TrainerClient
from oddity.client.connection import ServiceClient, tls_files

Service = Literal["detector", "trainer", "embedder"]
PANEL = "Connection"


@dataclass(frozen=True)
class Endpoint:
    client_class: type[ServiceClient]
    env_var: str
    default: str


ENDPOINTS: dict[Service, Endpoint] = {
    "embedder": Endpoint(EmbedderClient, "ODDITY_EMBEDDER_TARGET", "127.0.0.1:50051"),
    "detector": Endpoint(DetectorClient, "ODDITY_DETECTOR_TARGET", "127.0.0.1:50052"),
    "trainer": Endpoint(TrainerClient, "ODDITY_TRAINER_TARGET", "127.0.0.1:50053"),
}


def _file_option(name: str, env_var: str, help_text: str) -> Any:
    option = typer.Option(
        name, envvar=env_var, help=help_text, exists=True, dir_okay=False, readable=True, rich_help_panel=PANEL
    )
    return Annotated[Path | None, option]


def _parameters(service: Service) -> list[inspect.Parameter]:
    endpoint = ENDPOINTS[service]
    target = typer.Option(
        f"--{service}",
        envvar=endpoint.env_var,
        metavar="HOST:PORT",
        help=f"Address of the {service}.",
        rich_help_panel=PANEL,
    )
    timeout = typer.Option(
        "--timeout", envvar="ODDITY_TIMEOUT", min=0.1, help="Deadline of each call, in seconds.", rich_help_panel=PANEL
    )
    keyword = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("target", keyword, default=endpoint.default, annotation=Annotated[str, target]),
        inspect.Parameter(
            "tls_ca_file",
            keyword,
            default=None,
            annotation=_file_option(
                "--tls-ca-file", "ODDITY_TLS_CA_FILE", "CA bundle that verifies the service: calls use TLS."
            ),
        ),
        inspect.Parameter(
            "tls_cert_file",
            keyword,
            default=None,
            annotation=_file_option(
                "--tls-cert-file", "ODDITY_TLS_CERT_FILE", "Client certificate (PEM), for mutual TLS; with a key."
            ),
        ),
        inspect.Parameter(
            "tls_key_file",
            keyword,
            default=None,
            annotation=_file_option("--tls-key-file", "ODDITY_TLS_KEY_FILE", "Key of the client certificate (PEM)."),
        ),
        inspect.Parameter(
            "token_file",
            keyword,
            default=None,
            annotation=_file_option(
                "--token-file", "ODDITY_TOKEN_FILE", "File holding the bearer token (`name:token` or the bare token)."
            ),
        ),
        inspect.Parameter("timeout", keyword, default=30.0, annotation=Annotated[float, timeout]),
    ]


def open_client(
    service: Service,
    target: str,
    *,
    tls_ca_file: Path | None = None,
    tls_cert_file: Path | None = None,
    tls_key_file: Path | None = None,
    token_file: Path | None = None,
    timeout: float = 30.0,
) -> ServiceClient:
    """An SDK client of `service`; unusable TLS files are a usage error (exit code 2)."""
    try:
        tls = tls_files(None, tls_ca_file, tls_cert_file, tls_key_file)
        return ENDPOINTS[service].client_class(target, tls=tls, token_file=token_file, timeout=timeout)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tls-cert-file/--tls-key-file") from exc


def connects(service: Service) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the connection options of `service`; it is called with `client=`."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for name, p in signature.parameters.items() if name != "client"]
        added = _parameters(service)
        connection_names = [p.name for p in added]

        @functools.wraps(command)
        def run(**values: Any) -> None:
            settings = {name: values.pop(name) for name in connection_names}
            with open_client(service, **settings) as client:
                command(**values, client=client)

        parameters = [*own, *added]
        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate
