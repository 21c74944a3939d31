"""A detector serving two published models for the SDK and command-line tests: `sensors`
(four named features, explains its scores) and `routed` (per-age groups plus `all`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from oddity.cli.main import app
from tests.conftest import ServiceHandle, start_detector
from tests.support import models

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
