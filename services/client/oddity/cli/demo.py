"""`oddity demo`: sample datasets dropped into a stack, followed until their models serve,
then held-out normal and anomalous samples scored and a tagged image library's index asked
for one item's nearest items, its clusters and a new image's tags, in a few minutes on a laptop.

    oddity demo                      # against `oddity up` (./oddity-data), or a stack of its own
    oddity demo --start --json       # its own stack on a temporary folder; the figures as JSON

Against a running stack (`--detector`/`--trainer`/`--embedder`, and `--data-volume`: the
folder that stack runs on) it writes the datasets into `<folder>/datasets/`; a read token is
enough (the demo only reads; the trainer trains on its own). With `--start` (the default
when nothing answers at the detector and trainer addresses) it runs the same supervisor as
`oddity up` on free ports and on `--data-volume` or a new temporary folder, and stops it at
the end (`--keep-running`: keeps it until Ctrl-C).

The drawings and the library need an image model that loads offline: the embedder's `vit`
when its weights are local (or cached), else a small ViT made in `<folder>/demo/small-vit`
that the stack serves as `vit` (the one started here, or `oddity up`, which makes it the same
way); the demo says which it uses. A running stack that cannot embed with `vit` (or `minilm`)
gets the datasets it can serve, and the command to restart it so it can serve the others.

Reason to change: the demo command's options and flow.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import grpc
import pandas as pd
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oddity.cli import demo_data, demo_report, output
from oddity.cli.connection import Connection, connection_options
from oddity.cli.demo_encoder import (
    MODEL_NAME,
    EncoderUnavailable,
    default_image_model_id,
    offline_image_model,
    small_vit,
)
from oddity.cli.demo_progress import DemoTimeout, Follower, follow
from oddity.cli.demo_report import LibraryExample, Outcome
from oddity.cli.demo_scoring import score_held_out
from oddity.cli.endpoints import Service
from oddity.cli.exit_codes import FAILED, IN_USE, INTERRUPTED, OK, UNAVAILABLE, USAGE
from oddity.cli.options import JsonFlag
from oddity.cli.service_logs import TerminalOutput
from oddity.cli.stack import DataFolder, EmbedderModel, Ports, StackError, StackInUse, StackSettings, parse_model
from oddity.cli.supervisor import ServiceFailed, Stack
from oddity.cli.up import DEFAULT_FOLDER, StopSignals, report_failure, supervise
from oddity.client import DetectorClient, EmbedderClient, OddityError, TrainerClient, Unavailable
from oddity.client.connection import ServiceClient

CONNECTION = "Connection (a running stack)"
PROBE_SECONDS = 2.0
EMBEDDER_WAIT_SECONDS = 300.0  # until each model the demo needs is loaded or has failed (a first export)
EMBEDDER_START_SECONDS = 60.0  # for `oddity up` to start its embedder once a dataset needs it
DEFAULT_SEED = 7
TEXT_MODEL = "minilm"
# The library's example: nearest items shown, central items per cluster, tags suggested.
LIBRARY_NEAREST = 5
LIBRARY_REPRESENTATIVES = 3
LIBRARY_TAGS = 3


def _answers(client: ServiceClient) -> bool:
    """Whether a server answers health checks at the client's target (liveness: any Oddity service)."""
    stub = health_pb2_grpc.HealthStub(client.channel)
    try:
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=PROBE_SECONDS)
    except grpc.RpcError:  # refused, timed out, not a gRPC server: nobody to run the demo against
        return False
    return True


def _model_states(embedder: EmbedderClient, names: list[str], timeout: float) -> dict[str, str | None]:
    """For each embedder model: None once it serves, else why it cannot (after `timeout` for
    one still loading)."""
    states: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout
    for name in names:
        while True:
            try:
                embedder.models(name)
                states[name] = None
                break
            except Unavailable as exc:  # still loading (a first export takes a while), or the embedder is down
                if time.monotonic() > deadline:
                    states[name] = exc.message
                    break
                time.sleep(0.5)
            except OddityError as exc:
                states[name] = exc.message
                break
    return states


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does: the stack it started is stopped on the way out."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _image_models(folder: Path, given: tuple[EmbedderModel, ...]) -> tuple[tuple[EmbedderModel, ...], str]:
    """The embedder models for a stack the demo starts: `given`, plus a small local ViT as
    `vit` unless vit is given or the embedder's default loads offline."""
    made = offline_image_model(folder, given)
    if made is None:
        given_vit = [m.model_id for m in given if m.name == MODEL_NAME]
        return given, given_vit[0] if given_vit else str(default_image_model_id())
    default = default_image_model_id()
    output.note(
        f"{default or 'the default image model'} is not available offline: the drawings use a small ViT "
        f"({made.model_id})"
    )
    return (*given, made), made.model_id


def _wake_embedder(outcome: Outcome, embedder: EmbedderClient) -> bool:
    """Whether an embedder answers. `oddity up` starts its embedder once a dataset has
    `texts:` or `images:`: the texts dataset (its model ships with the embedder) is written
    first to wake it, then the demo waits for it."""
    if _answers(embedder):
        return True
    demo_data.write(outcome.folder, "demo-texts", outcome.seed)
    output.note(f"no embedder answers at {embedder.target} yet: waiting for the stack to start it")
    deadline = time.monotonic() + EMBEDDER_START_SECONDS
    while time.monotonic() < deadline:
        if _answers(embedder):
            return True
        time.sleep(1.0)
    return False


def _embeddable(outcome: Outcome, embedder: EmbedderClient, started: bool) -> list[str]:
    """The item datasets the embedder can embed; the others are skipped, saying what to do."""
    items = {"demo-drawings": MODEL_NAME, "demo-texts": TEXT_MODEL, "demo-library": MODEL_NAME}
    if not started and not _wake_embedder(outcome, embedder):
        for dataset in items:
            outcome.skipped[dataset] = (
                f"no embedder answers at {embedder.target}: give --embedder, or start the stack with "
                "oddity up --embedder"
            )
        return []
    states = _model_states(embedder, sorted(set(items.values())), EMBEDDER_WAIT_SECONDS)
    if states[MODEL_NAME] is None and not outcome.image_model:
        outcome.image_model = embedder.models(MODEL_NAME)[0].model_id
        output.note(f"the drawings and the library use the stack's {MODEL_NAME} ({outcome.image_model})")
    names = []
    for dataset, model in items.items():
        if states[model] is None:
            names.append(dataset)
            continue
        reason = f"the embedder cannot embed with {model!r}: {states[model]}"
        if model == MODEL_NAME and not started:
            try:
                made = small_vit(outcome.folder / "demo" / "small-vit")
                reason += f"; restart the stack with oddity up --model {MODEL_NAME}={made.resolve()} to serve one"
            except EncoderUnavailable as exc:
                reason += f"; {exc}"
        outcome.skipped[dataset] = reason
    return names


def _run(outcome: Outcome, clients: dict[Service, Any], check: Any, started: bool, max_wait: float) -> None:
    """Write the datasets, follow them until served, score the held-out files, ask the library's index."""
    detector: DetectorClient = clients["detector"]
    trainer: TrainerClient = clients["trainer"]
    since = datetime.now(UTC) - timedelta(seconds=5)  # the trainer's clock may run a little behind
    names = ["demo-sensors", "demo-decisions", *_embeddable(outcome, clients["embedder"], started)]
    datasets = [demo_data.write(outcome.folder, name, outcome.seed) for name in demo_data.WRITERS if name in names]
    output.note(f"wrote {len(datasets)} datasets into {outcome.folder / 'datasets'}", style="green")
    follower = Follower(trainer, detector, datasets, since)
    tracked = follow(follower, max_wait, check, time.monotonic, time.sleep)
    for item in tracked:
        if item.error:
            outcome.failed[item.dataset.name] = item.error
        elif item.dataset.kind == "library":
            outcome.library = _library_example(detector, outcome.folder, item.dataset, item.model)
        else:
            outcome.figures += score_held_out(detector, item.dataset, item.model)


def _library_example(
    detector: DetectorClient, root: Path, dataset: demo_data.DemoDataset, model: str
) -> LibraryExample:
    """The library's first item and its nearest items, the clusters, and the tags suggested for
    the held-out new image."""
    first = demo_data.library_items(root).iloc[0]
    query = str(first["id"])
    new = pd.read_csv(dataset.held_out).iloc[0]
    image = dataset.held_out.parent / str(new["file"])
    return LibraryExample(
        query=query,
        query_tags=demo_data.tag_list(str(first["tags"])),
        similar=detector.similar(model, item_id=query, top_k=LIBRARY_NEAREST, exclude_self=True),
        clusters=detector.clusters(model, representatives=LIBRARY_REPRESENTATIVES),
        image=image,
        image_tags=demo_data.tag_list(str(new["tags"])),
        suggested=detector.suggest_tags(model, image=image, top_k=LIBRARY_TAGS),
    )


@connection_options("detector", "trainer", "embedder", panel=CONNECTION)
def demo(
    data_volume: Annotated[
        Path | None,
        typer.Option(
            "--data-volume",
            "-d",
            envvar="ODDITY_DATA_VOLUME",
            file_okay=False,
            help="The stack's folder: the datasets go into its datasets/. Default: ./oddity-data for a running "
            "stack, a new temporary folder with --start.",
            show_default=False,
        ),
    ] = None,
    start: Annotated[
        bool | None,
        typer.Option(
            "--start/--no-start",
            help="Start a stack for the demo (default: when nothing answers at --detector and --trainer).",
            show_default=False,
        ),
    ] = None,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="With --start: keep the stack running after the demo, until Ctrl-C.")
    ] = False,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            metavar="NAME=[image:|text:]PATH_OR_HUB_ID",
            help="With --start: an embedder model, as for oddity up (e.g. vit=/weights/vit for the drawings).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the sample data (the same seed writes the same files).")] = (
        DEFAULT_SEED
    ),
    max_wait: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for every dataset to be trained and served.")
    ] = 600.0,
    json_output: JsonFlag = False,
    *,
    connection: Connection,
) -> None:
    """Drop sample datasets (sensors, a decision log, drawings by age, texts, a tagged image library)
    into a stack, follow them until they serve, score held-out normal and anomalous samples, and
    show the library's similar items, clusters and a tag suggestion.

    Exit codes: 0 done; 1 a dataset failed to train or a service failed; 2 usage error; 3 the
    stack at the given addresses is only partly there; 4 the folder is used by another
    oddity up; 130 interrupted.
    """
    clock_start = time.monotonic()
    try:
        given_models = tuple(parse_model(value) for value in model or ())
    except StackError as exc:
        raise typer.BadParameter(str(exc), param_hint="--model") from None
    targets = connection.targets
    if start is None:
        answering = {}
        for service in ("detector", "trainer"):
            with connection.open(service) as client:
                answering[service] = _answers(client)
        if answering["detector"] != answering["trainer"]:
            up_one: Service = "detector" if answering["detector"] else "trainer"
            down: Service = "trainer" if up_one == "detector" else "detector"
            output.error(
                f"the {up_one} answers at {targets[up_one]} but the {down} does not at {targets[down]}: "
                f"give --{down}, or --start for a stack of the demo's own"
            )
            raise typer.Exit(UNAVAILABLE)
        start = not answering["detector"]
        if start:
            output.note("no stack answers at the detector and trainer addresses: starting one for the demo")
    if not start and (keep_running or given_models):
        output.error(
            f"--keep-running and --model go with a stack the demo starts; one answers at {targets['detector']}: "
            "give --start (its own stack on free ports) or leave them out"
        )
        raise typer.Exit(USAGE)
    with _sigterm_interrupts():
        try:
            code = _demo(
                start,
                data_volume,
                given_models,
                seed,
                max_wait,
                keep_running,
                json_output,
                connection,
                clock_start,
            )
        except KeyboardInterrupt:
            output.error("interrupted")
            code = INTERRUPTED
    raise typer.Exit(code)


@dataclass
class OwnStack:
    """A stack the demo started, and the image model it serves as vit."""

    stack: Stack
    folder: Path
    image_model: str


def _start_stack(data_volume: Path | None, given_models: tuple[EmbedderModel, ...]) -> OwnStack | int:
    """Start a stack on free ports (an exit code when it cannot start)."""
    folder = data_volume if data_volume is not None else Path(tempfile.mkdtemp(prefix="oddity-demo-"))
    image_model = ""
    try:
        models, image_model = _image_models(folder, given_models)
    except EncoderUnavailable as exc:
        output.note(str(exc))
        models = given_models
    settings = StackSettings(
        folder=DataFolder(folder), ports=Ports.free(), embedder="on", models=models, grace_period_seconds=2.0
    )
    stack = Stack(settings, TerminalOutput(raw=False, quiet=True))
    try:
        stack.start()
    except StackInUse as exc:
        output.error(str(exc))
        return IN_USE
    except StackError as exc:
        output.error(str(exc))
        return USAGE
    except ServiceFailed as failure:
        report_failure(failure)
        return FAILED
    output.note(f"stack started on {folder} (logs in {folder / 'logs'})", style="green")
    return OwnStack(stack, folder, image_model)


def _demo(
    start: bool,
    data_volume: Path | None,
    given_models: tuple[EmbedderModel, ...],
    seed: int,
    max_wait: float,
    keep_running: bool,
    json_output: bool,
    connection: Connection,
    clock_start: float,
) -> int:
    own: OwnStack | None = None
    if start:
        started = _start_stack(data_volume, given_models)
        if isinstance(started, int):
            return started
        own = started
        folder = own.folder
        # The stack started here is plaintext on loopback: no TLS files, no token.
        connection = Connection(dict(own.stack.targets), timeout=connection.timeout)
    else:
        folder = data_volume if data_volume is not None else DEFAULT_FOLDER
        if not (folder / "datasets").is_dir():
            output.error(
                f"{folder / 'datasets'} does not exist: give --data-volume, the folder the stack at "
                f"{connection.targets['trainer']} runs on (oddity up --data-volume ...)"
            )
            return USAGE
    outcome = Outcome(
        folder=folder.resolve(), started_stack=start, seed=seed, image_model=own.image_model if own else ""
    )
    outcome.targets = dict(connection.targets)
    try:
        code = _demo_on(outcome, own, connection, max_wait, keep_running, json_output, clock_start)
        if own is not None and keep_running and code == OK:
            output.note("the stack keeps running: Ctrl-C stops it", style="green")
            with StopSignals() as signals:
                return supervise(own.stack, signals)
        return code
    finally:
        if own is not None:
            own.stack.stop()  # (nothing left to stop after supervise)


def _demo_on(
    outcome: Outcome,
    own: OwnStack | None,
    connection: Connection,
    max_wait: float,
    keep_running: bool,
    json_output: bool,
    clock_start: float,
) -> int:
    """Run the demo against the stack `connection` reaches, print what it found; the exit code."""
    code = OK
    try:
        clients = {service: connection.open(service) for service in connection.targets}
        try:
            check = own.stack.check if own is not None else (lambda: None)
            _run(outcome, clients, check, own is not None, max_wait)
        finally:
            for client in clients.values():
                client.close()
    except ServiceFailed as failure:
        report_failure(failure)
        code = FAILED
    except DemoTimeout as exc:
        output.error(str(exc))
        code = FAILED
    except OddityError as exc:
        output.error(exc.message)
        code = UNAVAILABLE if isinstance(exc, Unavailable) else FAILED
    if code == OK and outcome.failed:
        code = FAILED
    outcome.seconds = time.monotonic() - clock_start
    running = own is None or keep_running
    if own is not None and running:
        outcome.metrics = {e.service: e.metrics_url for e in own.stack.endpoints() if e.metrics_url}
    if code == OK or outcome.figures:
        restart = demo_report.restart_command(outcome.folder, own.stack.settings.models if own else ())
        outcome.next_steps = demo_report.next_steps(outcome, running, restart)
        if json_output:
            output.print_json(outcome.to_dict())
        else:
            demo_report.show(outcome)
    return code
