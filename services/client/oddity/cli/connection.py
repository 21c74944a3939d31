"""The options that say how a command reaches the services, declared once, and the clients
made from them.

Every command that calls a service takes, after its own options:

    --detector / --trainer / --embedder HOST:PORT   (ODDITY_DETECTOR_TARGET, ..._TRAINER_..., ..._EMBEDDER_...)
    --tls-ca-file, --tls-cert-file, --tls-key-file  (ODDITY_TLS_CA_FILE, ODDITY_TLS_CERT_FILE, ODDITY_TLS_KEY_FILE)
    --token-file                                    (ODDITY_TOKEN_FILE)
    --timeout SECONDS                               (ODDITY_TIMEOUT)

`@connects("detector")` adds these options to a command's signature (so typer shows and parses
them like the command's own) and calls the command with `client=` an open SDK client, closed
when the command returns; a service that cannot be reached is reported at its first call.
`@connection_options("detector", "trainer", ...)` adds the options of several services and
calls the command with `connection=` what they say (`oddity demo`).
Options win over env vars, env vars over defaults (the endpoints table).

Reason to change: how the command line finds and authenticates to the services.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from oddity.cli.endpoints import ENDPOINTS, Service
from oddity.client import DetectorClient, EmbedderClient, TrainerClient
from oddity.client.connection import DEFAULT_TIMEOUT_SECONDS, ServiceClient, tls_files

PANEL = "Connection"
# How long a command's first call waits for a service to answer before it says there is none.
CONNECT_SECONDS = 2.0
CLIENTS: dict[Service, type[ServiceClient]] = {
    "embedder": EmbedderClient,
    "detector": DetectorClient,
    "trainer": TrainerClient,
}
Command = Callable[..., None]


@dataclass(frozen=True)
class Connection:
    """What the connection options say: where each service is, and the TLS files, token and
    deadline of every call."""

    targets: dict[Service, str] = field(default_factory=dict)
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    token_file: Path | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS

    def open(self, service: Service) -> ServiceClient:
        """An SDK client of `service`; unusable TLS files are a usage error (exit code 2)."""
        try:
            tls = tls_files(None, self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
            return CLIENTS[service](
                self.targets[service],
                tls=tls,
                token_file=self.token_file,
                timeout=self.timeout,
                connect_timeout=CONNECT_SECONDS,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--tls-cert-file/--tls-key-file") from exc


def _file_option(name: str, env_var: str, help_text: str, panel: str) -> Any:
    option = typer.Option(
        name, envvar=env_var, help=help_text, exists=True, dir_okay=False, readable=True, rich_help_panel=panel
    )
    return Annotated[Path | None, option]


def _target_parameter(service: Service, panel: str) -> inspect.Parameter:
    endpoint = ENDPOINTS[service]
    option = typer.Option(
        f"--{service}",
        envvar=endpoint.target_env,
        metavar="HOST:PORT",
        help=f"Address of the {service}.",
        rich_help_panel=panel,
    )
    annotation = Annotated[str, option]
    return inspect.Parameter(
        f"{service}_target", inspect.Parameter.KEYWORD_ONLY, default=endpoint.default_target, annotation=annotation
    )


def _security_parameters(panel: str) -> list[inspect.Parameter]:
    """TLS files, token file and deadline: the same for every service a command calls."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    files = {  # parameter: (flag, env var, help)
        "tls_ca_file": ("--tls-ca-file", "ODDITY_TLS_CA_FILE", "CA bundle that verifies the services: calls use TLS."),
        "tls_cert_file": (
            "--tls-cert-file",
            "ODDITY_TLS_CERT_FILE",
            "Client certificate (PEM), for mutual TLS; with a key.",
        ),
        "tls_key_file": ("--tls-key-file", "ODDITY_TLS_KEY_FILE", "Key of the client certificate (PEM)."),
        "token_file": (
            "--token-file",
            "ODDITY_TOKEN_FILE",
            "File holding the bearer token (`name:token` or the bare token).",
        ),
    }
    timeout = typer.Option(
        "--timeout", envvar="ODDITY_TIMEOUT", min=0.1, help="Deadline of each call, in seconds.", rich_help_panel=panel
    )
    return [
        *(
            inspect.Parameter(name, keyword, default=None, annotation=_file_option(*option, panel))
            for name, option in files.items()
        ),
        inspect.Parameter("timeout", keyword, default=DEFAULT_TIMEOUT_SECONDS, annotation=Annotated[float, timeout]),
    ]


def _with_options(
    command: Command,
    services: tuple[Service, ...],
    panel: str,
    injected: str,
    provide: Callable[[Connection], AbstractContextManager[Any]],
) -> Command:
    """`command` with the connection options of `services` added to its signature; it is called
    with `injected=` what `provide` makes of the Connection they say."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for name, p in signature.parameters.items() if name != injected]
    targets = [_target_parameter(s, panel) for s in services]
    security = _security_parameters(panel)

    @functools.wraps(command)
    def run(**values: Any) -> None:
        connection = Connection(
            targets={s: values.pop(p.name) for s, p in zip(services, targets, strict=True)},
            **{p.name: values.pop(p.name) for p in security},
        )
        with provide(connection) as provided:
            command(**values, **{injected: provided})

    parameters = [*own, *targets, *security]
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    return run


@contextmanager
def _as_is(connection: Connection) -> Iterator[Connection]:
    yield connection


def connection_options(*services: Service, panel: str = PANEL) -> Callable[[Command], Command]:
    """Give a command the connection options of `services`; it is called with `connection=`."""
    return lambda command: _with_options(command, services, panel, "connection", _as_is)


def connects(service: Service) -> Callable[[Command], Command]:
    """Give a command the connection options of `service`; it is called with `client=`."""
    return lambda command: _with_options(command, (service,), PANEL, "client", lambda c: c.open(service))
