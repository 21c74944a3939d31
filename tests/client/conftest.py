"""A detector serving two published models for the SDK and command-line tests: `sensors`
(four named features, explains its scores) and `routed` (per-age groups plus `all`); and
`oddity up` as a real process (`start_up`) for the stack tests."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from typer.testing import CliRunner

from oddity.cli.main import app
from tests.conftest import ServiceHandle, SharedEncoders, start_detector, start_embedder
from tests.support import models
from tests.support.servers import wait_models

FEATURES = ["f0", "f1", "f2", "f3"]


@dataclass
class Served:
    repository: Path
    detector: ServiceHandle

    @property
    def target(self) -> str:
        return self.detector.server.target


def publish_models(repository: Path) -> None:
    d = len(FEATURES)
    fitted = models.fit_pca_group(models.normal_rows(400, d), components=2)
    models.publish_simple(repository, "sensors", fitted, dimension=d, feature_names=FEATURES)
    young = models.fit_pca_group(models.normal_rows(300, d, seed=1), components=2)
    old = models.fit_pca_group(models.normal_rows(300, d, seed=2, shift=3.0), components=2)
    models.publish(
        repository,
        "routed",
        {
            "all": (models.group_proto("all", fitted), fitted.onnx),
            "young": (models.group_proto("young", young, upper=6.0), young.onnx),
            "old": (models.group_proto("old", old, lower=6.0, upper_inclusive=True), old.onnx),
        },
        dimension=d,
        routing_key="age",
        feature_names=FEATURES,
    )


@pytest.fixture(scope="package")
def served(tmp_path_factory) -> Iterator[Served]:
    repository = tmp_path_factory.mktemp("client") / "models"
    repository.mkdir()
    publish_models(repository)
    detector = start_detector(repository)
    yield Served(repository, detector)
    detector.close()


@pytest.fixture(scope="package")
def embedder(shared_encoders: SharedEncoders) -> Iterator[ServiceHandle]:
    """One embedder for the modules that embed: a tiny ViT ("vit", the default) and MiniLM
    ("text"), exported once (the export is most of an embedder's start)."""
    handle = start_embedder(shared_encoders.cache_dir, shared_encoders.models)
    try:
        wait_models(handle, timeout=300)
        yield handle
    finally:
        handle.close()


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def invoke(cli: CliRunner, *args: object):
    """Run `oddity ARGS...` in-process."""
    return cli.invoke(app, [str(a) for a in args], catch_exceptions=False)


def stdout_of(result) -> str:
    """The command's stdout without the log lines that the services running in this process
    (test fixtures) write to stdout while it runs, e.g. a warning for a refused call."""
    return "".join(line for line in result.stdout.splitlines(keepends=True) if not _service_log(line))


def usage_error(result) -> str:
    """Typer's usage error box on stderr as one line of text."""
    return " ".join(result.stderr.replace("│", " ").split())


def _service_log(line: str) -> bool:
    try:
        value = json.loads(line)
    except ValueError:
        return False
    return isinstance(value, dict) and {"event", "level", "timestamp"} <= value.keys()


def table(n: int, seed: int = 5) -> pd.DataFrame:
    """Rows of the models' features in another order, with columns the models do not read,
    some unusual rows, and an age per row."""
    rng = np.random.default_rng(seed)
    rows = models.normal_rows(n, len(FEATURES), seed=seed)
    rows[::9] += rng.normal(0, 4, size=rows[::9].shape).astype(np.float32)  # a few unusual rows
    frame = pd.DataFrame(rows.astype(np.float64), columns=FEATURES)
    frame.insert(0, "id", [f"row-{i}" for i in range(n)])
    frame["age"] = rng.integers(3, 12, n).astype(np.float64)
    return frame[["id", "f2", "age", "f0", "f3", "f1"]]


@dataclass
class UpProcess:
    """`oddity up --log-json` and what it printed: JSON service lines on stdout."""

    proc: subprocess.Popen
    folder: Path
    events: list[dict] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def serving(self, service: str) -> dict | None:
        return next((e for e in self.events if e.get("service") == service and e.get("event") == "serving"), None)

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.serving(service)['port']}"

    def children(self) -> dict[str, psutil.Process]:
        """The service processes by module, e.g. {"oddity.trainer.main": Process}; any other
        child (--prometheus's) by its name."""
        found = {}
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            command = child.cmdline()
            found[command[command.index("-m") + 1] if "-m" in command else child.name()] = child
        return found

    def stderr_text(self) -> str:
        return "\n".join(self.stderr)

    def kill(self) -> None:
        """After a failed test: no stack left running (its services follow it: PR_SET_PDEATHSIG)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _read(stream, sink) -> None:
    for line in stream:
        sink(line.rstrip("\n"))


def with_text_model_exported(folder: Path, shared: SharedEncoders) -> Path:
    """`folder`, a stack's, with MiniLM's export already in its embedder-cache/ (a copy of the
    session's): the stack's embedder serves that MiniLM as its default text model and loads it
    instead of exporting it again (tens of seconds of what tests/embedder/test_export.py tests)."""
    shared.copy_export("text", folder / "embedder-cache")
    return folder


def start_up(folder: Path, *args: str) -> UpProcess:
    """`oddity up` on `folder`, every port free, a short grace period, raw JSON lines."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oddity.cli.main",
            "up",
            "--data-volume",
            str(folder),
            "--detector-port",
            "0",
            "--trainer-port",
            "0",
            "--embedder-port",
            "0",
            "--metrics-port-base",
            "0",
            "--grace-period-seconds",
            "2",
            "--log-json",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    up = UpProcess(proc, folder)

    def event(line: str) -> None:
        try:
            up.events.append(json.loads(line))
        except ValueError:
            up.events.append({"unparsed": line})

    threading.Thread(target=_read, args=(proc.stdout, event), daemon=True).start()
    threading.Thread(target=_read, args=(proc.stderr, up.stderr.append), daemon=True).start()
    return up
