"""`oddity up`: the embedder, detector and trainer on this machine, on one folder, until
Ctrl-C or SIGTERM.

    oddity up                                  # ./oddity-data, ports 50051-50053, metrics 9101-9103
    oddity up --data-volume /srv/oddity --detector-port 0 --metrics-port-base 0   # 0: free ports
    oddity up --model vit=/weights/vit-base --model minilm=text:/weights/minilm
    oddity up --prometheus                     # + Debian's prometheus on :9090 scraping the three

The `--model` choices are kept in `<folder>/stack.json` and served again by an `oddity up` on
that folder without --model (models trained on an encoder keep it); --model replaces them.
When no model is named `vit` and the embedder's default image model does not load offline
(a hub id not in the local cache), a small local ViT is made in `<folder>/demo/small-vit` and
served as `vit` (see demo_encoder), and kept the same way. The panel says which models come
from where.

It prints where everything is (addresses, metrics URLs, the folder to drop datasets into),
then the services' log lines made short (`--log-json`: as they are; every line also goes to
`<folder>/logs/<service>.log`). Ctrl-C or SIGTERM stops the three cleanly and exits 0; a
service that dies is reported with its last lines, the others are stopped, and the exit code
is 1. A folder that another `oddity up` runs on, or a port in use, is one line and exit code 4,
before anything starts. The embedder starts only when it is needed (`--embedder/--no-embedder`
decide instead).

Reason to change: the up command's options and what it shows.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from oddity.cli import output
from oddity.cli.demo_encoder import EncoderUnavailable, default_image_model_id, offline_image_model
from oddity.cli.endpoints import ENDPOINTS, METRICS_PORT_BASE, SERVICES, Service
from oddity.cli.exit_codes import FAILED, IN_USE, INTERRUPTED, OK, USAGE
from oddity.cli.local_prometheus import DEFAULT_PORT as DEFAULT_PROMETHEUS_PORT
from oddity.cli.local_prometheus import LocalPrometheus, scrape_config
from oddity.cli.service_logs import TerminalOutput, human_line
from oddity.cli.stack import (
    STACK_FILE,
    DataFolder,
    EmbedderMode,
    EmbedderModel,
    Ports,
    Security,
    StackError,
    StackInUse,
    StackSettings,
    parse_model,
    port_in_use,
)
from oddity.cli.supervisor import Interrupted, ServiceFailed, Stack, parse_line

NETWORK = "Network"
SECURITY = "TLS and tokens"
DEFAULT_FOLDER = Path("oddity-data")
FAILED_LINES = 20  # of a dead service's last lines, shown
METRICS_BASE_HELP = (
    "Metrics ports are this "
    + ", ".join(f"+{e.metrics_offset} ({name})" for name, e in ENDPOINTS.items())
    + "; 0: free ones."
)


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP ask for a stop; a second one asks to kill at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def requested(self) -> bool:
        return self.count > 0

    def forced(self) -> bool:
        return self.count > 1


def report_failure(failure: ServiceFailed) -> None:
    output.error(failure.reason)
    lines = failure.lines[-FAILED_LINES:]
    if lines:
        output.note(f"its last {len(lines)} lines:", style="red")
        for raw in lines:
            output.err.print(human_line(failure.service, raw, parse_line(raw)), soft_wrap=True)


def stop_stack(stack: Stack, signals: StopSignals) -> int:
    """Stop every service; OK when each exited 0."""
    codes = stack.stop(force=signals.forced)
    bad = {name: code for name, code in codes.items() if code != 0}
    if signals.forced():
        output.note("stopped (killed)", style="yellow")
        return INTERRUPTED
    if bad:
        output.error("not every service stopped cleanly: " + ", ".join(f"{n} exit code {c}" for n, c in bad.items()))
        return FAILED
    output.note("stopped", style="green")
    return OK


def supervise(stack: Stack, signals: StopSignals) -> int:
    """Watch the running stack until a stop is asked for or a service dies; then stop it.
    Returns the exit code."""
    try:
        while not signals.requested():
            stack.check(signals.requested)
            signals_wait(0.25, signals)
    except Interrupted:
        pass
    except ServiceFailed as failure:
        report_failure(failure)
        output.note("stopping the other services", style="red")
        stop_stack(stack, signals)
        return FAILED
    output.note("stopping (Ctrl-C again to kill them now)", style="yellow")
    return stop_stack(stack, signals)


def signals_wait(seconds: float, signals: StopSignals) -> None:
    """Sleep in short steps, returning early once a stop is asked for."""
    deadline = time.monotonic() + seconds
    while not signals.requested() and time.monotonic() < deadline:
        time.sleep(0.05)


def choose_models(
    folder: DataFolder, given: tuple[EmbedderModel, ...], mode: EmbedderMode
) -> tuple[tuple[EmbedderModel, ...], list[str]]:
    """The embedder models to serve, and the panel's lines saying where they come from: those
    given, else those remembered in stack.json; plus the small local ViT as vit when none is
    named vit and the default image model does not load offline."""
    models = given or folder.remembered_models()
    origin = "--model" if given else f"remembered from {STACK_FILE}"
    lines = [f"embedder models: {', '.join(f'{m.name}={m.model_id}' for m in models)} ({origin})"] if models else []
    if mode == "off":
        return models, lines
    try:
        made = offline_image_model(folder.root, models)
    except EncoderUnavailable as exc:
        output.note(str(exc))
        return models, lines
    if made is not None:
        default = default_image_model_id() or "the default image model"
        lines.append(
            f"embedder models: {made.name}={made.model_id} (a small local ViT, random weights: {default} "
            f"does not load offline; kept in {STACK_FILE})"
        )
        models = (*models, made)
    return models, lines


def welcome(stack: Stack, model_lines: list[str]) -> Panel:
    """Where everything is, for the first five minutes."""
    folder = stack.settings.folder.root.resolve()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_column()
    for endpoint in stack.endpoints():
        if endpoint.state == "running":
            grid.add_row(endpoint.service, endpoint.target, endpoint.metrics_url or "metrics off")
        elif endpoint.state == "waiting":
            grid.add_row(endpoint.service, endpoint.target, "starts when a dataset has images: or texts:")
        else:
            grid.add_row(endpoint.service, "off", "(--no-embedder)")
    grid.add_row("", "", "")
    grid.add_row("datasets", f"{folder / 'datasets'}/<name>/", "drop dataset.yaml + data files here")
    grid.add_row("models", str(folder / "models"), "")
    grid.add_row("logs", f"{folder / 'logs'}/<service>.log", "")
    lines: list[Any] = [grid, Text("")]
    lines += [Text(line) for line in model_lines]
    exports = [
        f"{ENDPOINTS[e.service].target_env}={e.target}"
        for e in stack.endpoints()
        if e.state != "off" and e.target != ENDPOINTS[e.service].default_target
    ]
    if folder != DEFAULT_FOLDER.resolve():  # where `oddity demo` writes its datasets
        exports.append(f"ODDITY_DATA_VOLUME={folder}")
    if exports:
        lines.append(Text(f"other shells: export {' '.join(exports)}", style="dim"))
    lines.append(Text("next: oddity demo · oddity status · oddity models · docs/datasets.md", style="dim"))
    lines.append(Text("Ctrl-C stops all three", style="dim"))
    return Panel(Group(*lines), title="Oddity is up", title_align="left", border_style="green", expand=False)


def show_panel(panel: Panel) -> None:
    """On stderr: as wide as the terminal, or wide enough for whole paths in a pipe or file."""
    console = output.err if output.err.is_terminal else Console(file=sys.stderr, width=output.PIPE_WIDTH)
    console.print(panel)


def _metrics_ports(base: int, overrides: dict[str, int | None]) -> dict[str, int]:
    ports: dict[str, int] = {}
    for name in SERVICES:
        given = overrides[name]
        ports[name] = given if given is not None else (base + ENDPOINTS[name].metrics_offset if base else 0)
    return ports


FileOption = Path | None


def _file(flag: str, help_text: str) -> Any:
    return typer.Option(flag, exists=True, dir_okay=False, readable=True, help=help_text, rich_help_panel=SECURITY)


def _port(flag: str, help_text: str) -> Any:
    return typer.Option(flag, min=0, max=65535, help=help_text, rich_help_panel=NETWORK)


def _grpc_port(service: Service) -> Any:
    return _port(f"--{service}-port", f"{service.capitalize()} gRPC port (0: a free one).")


def up(
    data_volume: Annotated[
        Path,
        typer.Option(
            "--data-volume",
            "-d",
            envvar="ODDITY_DATA_VOLUME",
            file_okay=False,
            help="Folder of the stack: datasets/ to drop data into, models/, embedder-cache/, logs/ (created).",
        ),
    ] = DEFAULT_FOLDER,
    embedder: Annotated[
        bool | None,
        typer.Option(
            "--embedder/--no-embedder",
            help="Start the embedder now / never (default: once a dataset has images: or texts:).",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME=[image:|text:]PATH_OR_HUB_ID",
            help="An embedder model (repeatable), added to the embedder's defaults or replacing one by name, "
            "e.g. vit=/weights/vit. Text when prefixed text: or when the folder has a tokenizer and no image "
            "processor; else image.",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address the services bind (0.0.0.0: every interface).", rich_help_panel=NETWORK)
    ] = "127.0.0.1",
    metrics_host: Annotated[
        str | None,
        typer.Option(help="Address of the /metrics endpoints (default: --host).", rich_help_panel=NETWORK),
    ] = None,
    detector_port: Annotated[int, _grpc_port("detector")] = ENDPOINTS["detector"].port,
    trainer_port: Annotated[int, _grpc_port("trainer")] = ENDPOINTS["trainer"].port,
    embedder_port: Annotated[int, _grpc_port("embedder")] = ENDPOINTS["embedder"].port,
    metrics_port_base: Annotated[int, _port("--metrics-port-base", METRICS_BASE_HELP)] = METRICS_PORT_BASE,
    detector_metrics_port: Annotated[int | None, _port("--detector-metrics-port", "Overrides the base.")] = None,
    trainer_metrics_port: Annotated[int | None, _port("--trainer-metrics-port", "Overrides the base.")] = None,
    embedder_metrics_port: Annotated[int | None, _port("--embedder-metrics-port", "Overrides the base.")] = None,
    tls_cert_file: Annotated[FileOption, _file("--tls-cert-file", "Certificate (PEM) the services serve.")] = None,
    tls_key_file: Annotated[FileOption, _file("--tls-key-file", "Key of --tls-cert-file (PEM).")] = None,
    tls_ca_file: Annotated[
        FileOption, _file("--tls-ca-file", "CA of the services' certificates: they call each other over TLS.")
    ] = None,
    tls_client_auth: Annotated[
        bool,
        typer.Option(help="Mutual TLS: clients need a certificate signed by --tls-ca-file.", rich_help_panel=SECURITY),
    ] = False,
    read_tokens_file: Annotated[
        FileOption, _file("--read-tokens-file", "Tokens that may read (name:token lines).")
    ] = None,
    admin_tokens_file: Annotated[
        FileOption, _file("--admin-tokens-file", "Tokens that may also train, load, roll back (name:token lines).")
    ] = None,
    token_file: Annotated[
        FileOption, _file("--token-file", "The (admin) token the services present to each other.")
    ] = None,
    metrics_token_file: Annotated[FileOption, _file("--metrics-token-file", "Bearer token /metrics requires.")] = None,
    grace_period_seconds: Annotated[
        float, typer.Option(min=0, help="On stop, how long calls in progress may run.")
    ] = 10.0,
    log_level: Annotated[
        str, typer.Option(help="Lowest level the services log: debug, info, warning, error.")
    ] = "info",
    log_json: Annotated[
        bool, typer.Option("--log-json", help="Print the services' JSON log lines as they are.")
    ] = False,
    prometheus: Annotated[
        bool,
        typer.Option(
            "--prometheus",
            help="Run Debian's prometheus (when installed) scraping the services; else print its scrape config.",
        ),
    ] = False,
    prometheus_port: Annotated[int, _port("--prometheus-port", "Port of --prometheus's web UI and API.")] = (
        DEFAULT_PROMETHEUS_PORT
    ),
) -> None:
    """Run the embedder, detector and trainer here, on one folder, until Ctrl-C.

    Exit codes: 0 stopped cleanly; 1 a service failed (its last lines are shown); 2 usage error;
    4 the folder or a port is in use (another oddity up).
    """
    if log_level not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter("debug, info, warning or error", param_hint="--log-level")
    try:
        given = tuple(parse_model(value) for value in model or ())
    except StackError as exc:
        raise typer.BadParameter(str(exc), param_hint="--model") from None
    mode: EmbedderMode = "auto" if embedder is None else ("on" if embedder else "off")
    folder = DataFolder(data_volume)
    try:
        models, model_lines = choose_models(folder, given, mode)
    except StackError as exc:
        output.error(str(exc))
        raise typer.Exit(USAGE) from None
    settings = StackSettings(
        folder=folder,
        host=host,
        metrics_host=metrics_host or host,
        ports=Ports(
            {"embedder": embedder_port, "detector": detector_port, "trainer": trainer_port},
            _metrics_ports(
                metrics_port_base,
                {"embedder": embedder_metrics_port, "detector": detector_metrics_port, "trainer": trainer_metrics_port},
            ),
        ),
        embedder=mode,
        models=models,
        security=Security(
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_ca_file=tls_ca_file,
            tls_client_auth=tls_client_auth,
            read_tokens_file=read_tokens_file,
            admin_tokens_file=admin_tokens_file,
            token_file=token_file,
            metrics_token_file=metrics_token_file,
        ),
        grace_period_seconds=grace_period_seconds,
        log_level=log_level,
    )
    stack = Stack(settings, TerminalOutput(raw=log_json))
    watcher = LocalPrometheus(settings.folder.root / "prometheus", settings.folder.logs, prometheus_port)
    raise typer.Exit(run(stack, model_lines, watcher if prometheus else None))


def run(stack: Stack, model_lines: list[str], prometheus: LocalPrometheus | None = None) -> int:
    """Start the stack, keep its models in stack.json (the folder is locked now), show where it
    is, supervise it until stopped. Returns the exit code."""
    with StopSignals() as signals:
        try:
            stack.start(signals.requested)
        except StackInUse as exc:
            output.error(str(exc))
            return IN_USE
        except StackError as exc:
            output.error(str(exc))
            return USAGE
        except Interrupted:
            output.note("stopped before every service was up", style="yellow")
            return OK
        except ServiceFailed as failure:
            report_failure(failure)
            return FAILED
        if stack.settings.models:
            stack.settings.folder.remember_models(stack.settings.models)
        show_panel(welcome(stack, model_lines))
        if prometheus is None:
            return supervise(stack, signals)
        watch(stack, prometheus)
        try:
            return supervise(stack, signals)
        finally:
            prometheus.stop()


def watch(stack: Stack, prometheus: LocalPrometheus) -> None:
    """Start Prometheus on the stack's /metrics endpoints, or print the config to give one."""
    ports: dict[str, int] = {
        name: process.metrics_port if (process := stack.processes.get(name)) else stack.settings.ports.metrics[name]
        for name in SERVICES
        if not (name == "embedder" and stack.settings.embedder == "off")
    }
    config = scrape_config(stack.settings, ports)
    if not prometheus.installed():
        output.note("prometheus is not installed (apt install prometheus); scrape config for your own:")
        output.err.print(config, markup=False, highlight=False, soft_wrap=True)
    elif port_in_use("127.0.0.1", prometheus.port):
        output.error(f"port {prometheus.port} is in use: no Prometheus (pass --prometheus-port)")
    else:
        prometheus.start(config)
        output.note(f"prometheus {prometheus.url} scrapes the services (logs/prometheus.log)", style="green")
