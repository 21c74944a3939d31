"""Fixtures: temporary volumes and real detector servers on 127.0.0.1."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oddity.common.logging import configure_logging
from oddity.common.metrics import new_registry
from oddity.common.server import ServiceHost
from oddity.detector.app import DetectorApp
from oddity.detector.settings import DetectorSettings
from oddity.v1 import detector_pb2_grpc, trainer_pb2_grpc
from tests.support.servers import ServerThread, channel

configure_logging(level="warning", json=True)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


class DetectorHandle:
    def __init__(self, server: ServerThread, app: DetectorApp) -> None:
        self.server = server
        self.app = app
        self.channel = channel(server.target)
        self.stub = detector_pb2_grpc.DetectorStub(self.channel)

    @property
    def registry(self):
        return self.app.registry

    @property
    def metrics_port(self) -> int:
        return self.server.host.metrics.port

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return response.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Value of one sample from the live /metrics endpoint (0 when absent)."""
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


def start_detector(repository: Path, **overrides) -> DetectorHandle:
    settings = DetectorSettings(
        host="127.0.0.1",
        port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        model_repository=repository,
        poll_interval_seconds=overrides.pop("poll_interval_seconds", 0.2),
        grace_period_seconds=2,
        **overrides,
    )
    holder: dict = {}

    def make_host() -> ServiceHost:
        registry = new_registry(process_metrics=False)
        holder["app"] = DetectorApp(settings, registry)
        return ServiceHost(holder["app"], settings, registry=registry)

    server = ServerThread(make_host).start()
    return DetectorHandle(server, holder["app"])


class TrainerHandle:
    def __init__(self, server: ServerThread, app) -> None:
        self.server = server
        self.app = app
        self.channel = channel(server.target)
        self.stub = trainer_pb2_grpc.TrainerStub(self.channel)

    @property
    def service(self):
        return self.app.service

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


def start_trainer(data_volume: Path, repository: Path, **overrides) -> TrainerHandle:
    from oddity.trainer.app import TrainerApp
    from oddity.trainer.settings import TrainerSettings

    settings = TrainerSettings(
        host="127.0.0.1",
        port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        data_volume=data_volume,
        model_repository=repository,
        force_polling=overrides.pop("force_polling", True),
        scan_interval_seconds=overrides.pop("scan_interval_seconds", 1.0),
        grace_period_seconds=2,
        **overrides,
    )
    holder: dict = {}

    def make_host() -> ServiceHost:
        registry = new_registry(process_metrics=False)
        holder["app"] = TrainerApp(settings, registry)
        return ServiceHost(holder["app"], settings, registry=registry)

    server = ServerThread(make_host).start()
    return TrainerHandle(server, holder["app"])


@pytest.fixture
def data_volume(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    (path / "datasets").mkdir(parents=True)
    return path


@pytest.fixture
def detector(repository: Path) -> Iterator[DetectorHandle]:
    handle = start_detector(repository)
    yield handle
    handle.close()
