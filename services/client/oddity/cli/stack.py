"""What a local stack is: one folder, three services, their addresses, and the command line
each service is started with.

    <folder>/datasets/<name>/   dataset.yaml + files: the trainer's data volume is <folder>
    <folder>/models/            the model repository (the trainer writes, the detector reads)
    <folder>/embedder-cache/    the embedder's exported ONNX graphs
    <folder>/logs/<service>.log every service's JSON log lines, appended
    <folder>/.oddity-up.lock    locked while a stack runs on the folder; holds its pid
    <folder>/stack.json         the embedder models `oddity up` serves there, kept for the next start

Before anything starts, the folder is locked and every port the stack will listen on is
checked: a folder or port taken (by another `oddity up`, most likely) is one line saying what
to do (`StackInUse`), and nothing of the running stack is touched. gRPC port 0 picks a free
one before the services start (each is told the addresses of the others at start, so they
can start at once); metrics port 0 is left to the service (the supervisor reads the bound
port from its "serving" log line). The embedder is needed for datasets with `images:` or
`texts:`; an embedder that starts later is found at the address the others were told.

Reason to change: the stack's folder layout, or the settings each service is started with.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib
import importlib.util
import json
import os
import re
import socket
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from oddity.cli.endpoints import ENDPOINTS, SERVICES, Service

EmbedderMode = Literal["auto", "on", "off"]
WILDCARD_HOSTS = {"0.0.0.0", "", "::", "[::]"}
# Top-level `images:` or `texts:` in a dataset.yaml (block or flow style): such a dataset
# needs the embedder. A pattern rather than a YAML parser keeps the client's dependencies small.
ITEM_KEYS = re.compile(r"(?m)^[\s{,]*[\"']?(images|texts)[\"']?\s*:")
TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
IMAGE_FILES = ("preprocessor_config.json",)
LOCK_FILE = ".oddity-up.lock"
STACK_FILE = "stack.json"


class StackError(Exception):
    """The stack cannot be started as asked (missing service, bad option): one line for people."""


class StackInUse(StackError):
    """The folder or a port is taken, by another stack most likely: one line saying what to do."""


@dataclass(frozen=True)
class DataFolder:
    root: Path

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def embedder_cache(self) -> Path:
        return self.root / "embedder-cache"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def stack_file(self) -> Path:
        return self.root / STACK_FILE

    def remembered_models(self) -> tuple[EmbedderModel, ...]:
        """The embedder models the last `oddity up` on this folder served (none before the first)."""
        try:
            document = json.loads(self.stack_file.read_text())
            return tuple(
                EmbedderModel(str(m["name"]), str(m["model_id"]), m["modality"])
                for m in document["models"]
                if m["modality"] in ("image", "text")
            )
        except FileNotFoundError:
            return ()
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise StackError(
                f"{self.stack_file} cannot be read ({exc!r}): remove it, or give every model with --model"
            ) from None

    def remember_models(self, models: tuple[EmbedderModel, ...]) -> None:
        """Keep `models` for the next start (written whole, then renamed: never half a file)."""
        document = {"models": [{"name": m.name, **m.to_json()} for m in models]}
        partial = self.stack_file.with_name(STACK_FILE + ".partial")
        partial.write_text(json.dumps(document, indent=2) + "\n")
        partial.replace(self.stack_file)

    def create(self) -> None:
        for folder in (self.datasets, self.models, self.embedder_cache, self.logs):
            folder.mkdir(parents=True, exist_ok=True)

    def item_datasets(self) -> list[str]:
        """Datasets whose dataset.yaml has `images:` or `texts:` (they need the embedder)."""
        found = []
        for spec in sorted(self.datasets.glob("*/dataset.yaml")):
            try:
                text = spec.read_text(errors="replace")
            except OSError:  # being written or removed: the next look sees it
                continue
            if ITEM_KEYS.search(text):
                found.append(spec.parent.name)
        return found


@dataclass(frozen=True)
class EmbedderModel:
    """One `--model NAME=[image:|text:]PATH_OR_HUB_ID`."""

    name: str
    model_id: str
    modality: Literal["image", "text"]

    def to_json(self) -> dict[str, str]:
        return {"model_id": self.model_id, "modality": self.modality}


def parse_model(value: str) -> EmbedderModel:
    """NAME=[image:|text:]PATH_OR_HUB_ID. The modality is the prefix when given; else a local
    folder with a tokenizer and no image processor is text; everything else is image."""
    name, sep, source = value.partition("=")
    name, source = name.strip(), source.strip()
    if not sep or not name or not source:
        raise StackError(f"--model {value!r}: give NAME=PATH_OR_HUB_ID, e.g. vit=/path/to/dir or minilm=text:/path")
    prefix, colon, rest = source.partition(":")
    if colon and prefix in ("image", "text"):
        if not rest:
            raise StackError(f"--model {value!r}: no path or hub id after {prefix}:")
        modality: Literal["image", "text"] = "text" if prefix == "text" else "image"
        return EmbedderModel(name, _local_or_id(rest), modality)
    folder = Path(source).expanduser()
    if folder.is_dir():
        has_tokenizer = any((folder / f).exists() for f in TEXT_FILES)
        has_image_processor = any((folder / f).exists() for f in IMAGE_FILES)
        if has_tokenizer and not has_image_processor:
            return EmbedderModel(name, str(folder.resolve()), "text")
    return EmbedderModel(name, _local_or_id(source), "image")


def _local_or_id(source: str) -> str:
    """A local folder as an absolute path (the embedder may run elsewhere than here), a hub id
    (owner/name) as given; a path to no folder is a mistake said at once."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    if source.startswith(("/", "./", "../", "~", ".\\")) or source in (".", ".."):
        raise StackError(f"--model: no folder at {source}")
    return source


@dataclass(frozen=True)
class Security:
    """TLS and tokens, the same for the three services (one certificate for the machine)."""

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_client_auth: bool = False
    read_tokens_file: Path | None = None
    admin_tokens_file: Path | None = None
    # The token the services present to each other (admin: the trainer tells detectors to load).
    token_file: Path | None = None
    metrics_token_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    def check(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise StackError("give --tls-cert-file and --tls-key-file together")
        if self.tls_client_auth and self.tls_ca_file is None:
            raise StackError("--tls-client-auth needs --tls-ca-file (the CA that signs the clients)")
        if (self.read_tokens_file or self.admin_tokens_file) and self.token_file is None:
            raise StackError(
                "with tokens files the services call each other with a token: give --token-file (an admin token)"
            )

    def args(self) -> list[str]:
        args: list[str] = []
        for flag, path in (
            ("--tls-cert-file", self.tls_cert_file),
            ("--tls-key-file", self.tls_key_file),
            ("--tls-ca-file", self.tls_ca_file),
            ("--read-tokens-file", self.read_tokens_file),
            ("--admin-tokens-file", self.admin_tokens_file),
            ("--metrics-token-file", self.metrics_token_file),
        ):
            if path is not None:
                args += [flag, str(path.resolve())]
        if self.tls_client_auth:
            args.append("--tls-client-auth")
        return args


@dataclass(frozen=True)
class Ports:
    """gRPC and metrics ports; 0: a free one."""

    grpc: dict[str, int] = field(default_factory=lambda: {name: e.port for name, e in ENDPOINTS.items()})
    metrics: dict[str, int] = field(default_factory=lambda: {name: e.metrics_port for name, e in ENDPOINTS.items()})

    @classmethod
    def free(cls) -> Ports:
        return cls({name: 0 for name in SERVICES}, {name: 0 for name in SERVICES})


@dataclass(frozen=True)
class StackSettings:
    folder: DataFolder
    host: str = "127.0.0.1"
    metrics_host: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    embedder: EmbedderMode = "auto"
    # Added to (or replacing by name) the embedder's default models.
    models: tuple[EmbedderModel, ...] = ()
    security: Security = field(default_factory=Security)
    grace_period_seconds: float = 10.0
    log_level: str = "info"
    poll_interval_seconds: float = 1.0  # the detector's repository scan (the trainer also tells it)

    @property
    def connect_host(self) -> str:
        """The address the services (and this machine's clients) reach each other at."""
        return "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host

    def with_ports(self, grpc: dict[str, int]) -> StackSettings:
        return replace(self, ports=Ports({**self.ports.grpc, **grpc}, self.ports.metrics))


def missing_services(names: tuple[Service, ...] = SERVICES) -> list[Service]:
    """Services that are not installed in this Python (each is its own distribution)."""
    return [name for name in names if importlib.util.find_spec(f"oddity.{name}") is None]


def install_hint(names: list[Service]) -> str:
    packages = " ".join(ENDPOINTS[name].distribution for name in names)
    return (
        f"oddity up runs the services in this Python ({sys.executable}); not installed: {', '.join(names)}. "
        f'Install them: pip install {packages} (or pip install "oddity-client[stack]"; '
        f"from a checkout: pip install -e services/{' -e services/'.join(names)})"
    )


class FolderLock:
    """The stack's hold on its folder: an exclusive flock on <folder>/.oddity-up.lock, whose
    content is the holder's pid. The kernel drops the lock when this process ends, however it
    ends (the services, started with close_fds, never hold it)."""

    def __init__(self, folder: DataFolder) -> None:
        self.folder = folder
        self._fd: int | None = None

    def acquire(self) -> None:
        self.folder.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise StackInUse(
                f"{self.folder.root} is used by another `oddity up`{pid}: stop it with Ctrl-C, "
                "or pass another --data-volume"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None


def _socket_address(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    bare = host.strip("[]")
    return (socket.AF_INET6 if ":" in bare else socket.AF_INET), (bare, port)


def port_in_use(host: str, port: int) -> bool:
    """Whether a service could not listen on host:port now. Probed as the services bind
    (SO_REUSEADDR: a port left in TIME_WAIT by a stopped stack is free); a host that is no
    address of this machine is left for the service to report."""
    family, address = _socket_address(host, port)
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


@dataclass(frozen=True)
class PortUse:
    """One port the stack listens on, and the `oddity up` option that moves it."""

    service: Service
    port: int
    metrics: bool

    @property
    def flag(self) -> str:
        return f"--{self.service}-metrics-port" if self.metrics else f"--{self.service}-port"


def check_ports(settings: StackSettings) -> None:
    """Raise StackInUse naming every fixed port (gRPC and metrics) that is taken, and the
    options that move them."""
    services = [name for name in SERVICES if name != "embedder" or settings.embedder != "off"]
    uses = [PortUse(name, settings.ports.grpc[name], metrics=False) for name in services]
    uses += [PortUse(name, settings.ports.metrics[name], metrics=True) for name in services]
    busy = [
        use
        for use in uses
        if use.port and port_in_use(settings.metrics_host if use.metrics else settings.host, use.port)
    ]
    if not busy:
        return
    flags = [use.flag for use in busy if not use.metrics]
    metrics_flags = [use.flag for use in busy if use.metrics]
    flags += metrics_flags if len(metrics_flags) < 2 else ["--metrics-port-base"]
    if len(busy) == 1:
        raise StackInUse(
            f"port {busy[0].port} is in use (another `oddity up`? stop it with Ctrl-C, or pass {flags[0]})"
        )
    ports = ", ".join(str(use.port) for use in busy)
    raise StackInUse(
        f"ports {ports} are in use (another `oddity up`? stop it with Ctrl-C, "
        f"or pass {', '.join(flags)}; 0 picks a free one)"
    )


def reserve_ports(host: str, count: int) -> list[int]:
    """`count` different ports free right now, for services whose addresses others must know
    before they start (the probes stay bound until all are chosen, so no port comes twice)."""
    family, address = _socket_address(host, 0)
    with contextlib.ExitStack() as probes:
        ports = []
        for _ in range(count):
            probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
            probe.bind(address)
            ports.append(int(probe.getsockname()[1]))
        return ports


def embedder_models(overrides: tuple[EmbedderModel, ...]) -> tuple[dict[str, dict[str, str]], str]:
    """The embedder's --models (its defaults, with `overrides` added or replacing by name) and
    its --default-model (vit when served, else the first override)."""
    defaults: dict[str, dict[str, str]] = {}
    try:  # the embedder's own defaults (e.g. MiniLM from its offline package), when installed
        settings = importlib.import_module("oddity.embedder.settings")
        defaults = {name: source.model_dump() for name, source in settings.default_models().items()}
    except ImportError:
        pass
    models = {**defaults, **{m.name: m.to_json() for m in overrides}}
    default = "vit" if "vit" in models else overrides[0].name
    return models, default


def _common(settings: StackSettings, service: str) -> list[str]:
    return [
        "--host",
        settings.host,
        "--port",
        str(settings.ports.grpc[service]),
        "--metrics-host",
        settings.metrics_host,
        "--metrics-port",
        str(settings.ports.metrics[service]),
        "--grace-period-seconds",
        f"{settings.grace_period_seconds:g}",
        "--log-level",
        settings.log_level,
        *settings.security.args(),
    ]


def service_args(settings: StackSettings, service: str, addresses: dict[Service, str]) -> list[str]:
    """The command line of one service (after `python -m <module>`); `addresses` holds the
    gRPC addresses of the services it calls."""
    folder = settings.folder
    token = settings.security.token_file
    args = _common(settings, service)
    if service == "embedder":
        args += ["--cache-dir", str(folder.embedder_cache.resolve())]
        if settings.models:
            models, default = embedder_models(settings.models)
            args += ["--models", json.dumps(models), "--default-model", default]
    elif service == "detector":
        args += [
            "--model-repository",
            str(folder.models.resolve()),
            "--embedder",
            addresses["embedder"],
            "--poll-interval-seconds",
            f"{settings.poll_interval_seconds:g}",
        ]
        if token is not None:
            args += ["--embedder-token-file", str(token.resolve())]
    else:
        args += [
            "--data-volume",
            str(folder.root.resolve()),
            "--model-repository",
            str(folder.models.resolve()),
            "--detectors",
            json.dumps([addresses["detector"]]),
            "--embedder",
            addresses["embedder"],
        ]
        if token is not None:
            args += ["--detector-token-file", str(token.resolve()), "--embedder-token-file", str(token.resolve())]
    return args


def metrics_url(settings: StackSettings, port: int) -> str:
    host = "127.0.0.1" if settings.metrics_host in WILDCARD_HOSTS else settings.metrics_host
    return f"http://{host}:{port}/metrics"  # plain HTTP; a token guards it when set


def service_env(service: Service) -> dict[str, str]:
    """Environment set for a service: JSON log lines (the supervisor reads them, whatever the
    user's ODDITY_<SERVICE>_LOG_JSON says) and unbuffered output (tracebacks arrive in order)."""
    prefix = ENDPOINTS[service].settings_env_prefix
    return {f"{prefix}LOG_JSON": "true", "PYTHONUNBUFFERED": "1"}
