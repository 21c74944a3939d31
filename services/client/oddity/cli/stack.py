"""What a local stack is: one folder, three services, their addresses, and the command line
each service is started with.

    <folder>/datasets/<name>/   dataset.yaml + files: the trainer's data volume is <folder>
    <folder>/models/            the model repository (the trainer writes, the detector reads)
    <folder>/embedder-cache/    the embedder's exported ONNX graphs
    <folder>/logs/<service>.log every service's JSON log lines, appended

Ports: 0 picks a free one (the supervisor reads the bound port from the service's "serving"
log line). The embedder is needed for datasets with `images:` or `texts:`; its address is
fixed before the detector and trainer start (they are told it at start), so an embedder that
starts later is found where they expect it.

Reason to change: the stack's folder layout, or the settings each service is started with.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
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


class StackError(Exception):
    """The stack cannot be started as asked (missing service, bad option): one line for people."""


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


def reserve_port(host: str) -> int:
    """A port free right now, for a service whose address others must know before it starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


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
