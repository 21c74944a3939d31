"""Fixtures: temporary volumes and real services on 127.0.0.1 (detector, trainer)."""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from oddity.common.logging import configure_logging
from oddity.common.metrics import new_metrics_registry
from oddity.common.server import ServiceHost
from oddity.detector.app import DetectorApp
from oddity.detector.settings import DetectorSettings
from oddity.embedder.app import EmbedderApp
from oddity.embedder.export import ensure_exported
from oddity.embedder.models import ModelSource
from oddity.embedder.settings import EmbedderSettings
from oddity.trainer.app import TrainerApp
from oddity.trainer.settings import TrainerSettings
from oddity.v1 import detector_pb2_grpc, embedder_pb2_grpc, trainer_pb2_grpc
from tests.support import encoders
from tests.support.servers import ServerThread, channel

configure_logging(level="warning", json=True)
# These machines reach no model hub: fail at once instead of retrying a download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Every service under test binds loopback on ephemeral ports and stops quickly.
LOOPBACK = {"host": "127.0.0.1", "port": 0, "metrics_host": "127.0.0.1", "metrics_port": 0, "grace_period_seconds": 2}


class ServiceHandle:
    """A service app running in a background thread, with a client stub on a real channel."""

    def __init__(self, make_app: Callable, settings, stub_class, interceptors: Sequence = ()) -> None:
        holder: dict = {}

        def make_host() -> ServiceHost:
            metrics_registry = new_metrics_registry(process_metrics=False)
            holder["app"] = make_app(settings, metrics_registry)
            return ServiceHost(holder["app"], settings, metrics_registry=metrics_registry, interceptors=interceptors)

        self.server = ServerThread(make_host).start()
        self.app = holder["app"]
        self.channel = channel(self.server.target)
        self.stub = stub_class(self.channel)

    @property
    def model_registry(self):
        return self.app.model_registry

    @property
    def service(self):
        return self.app.service

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


def start_detector(repository: Path, interceptors: Sequence = (), **overrides) -> ServiceHandle:
    overrides.setdefault("poll_interval_seconds", 0.2)
    settings = DetectorSettings(**{**LOOPBACK, **overrides}, model_repository=repository)
    return ServiceHandle(DetectorApp, settings, detector_pb2_grpc.DetectorStub, interceptors)


def start_trainer(data_volume: Path, repository: Path, **overrides) -> ServiceHandle:
    overrides.setdefault("force_polling", True)
    overrides.setdefault("scan_interval_seconds", 1.0)
    settings = TrainerSettings(**{**LOOPBACK, **overrides}, data_volume=data_volume, model_repository=repository)
    return ServiceHandle(TrainerApp, settings, trainer_pb2_grpc.TrainerStub)


def start_embedder(cache_dir: Path, models: dict, interceptors: Sequence = (), **overrides) -> ServiceHandle:
    overrides.setdefault("default_model", next(iter(models)))
    settings = EmbedderSettings(**{**LOOPBACK, **overrides}, cache_dir=cache_dir, models=models)
    return ServiceHandle(EmbedderApp, settings, embedder_pb2_grpc.EmbedderStub, interceptors)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


@pytest.fixture
def data_volume(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    (path / "datasets").mkdir(parents=True)
    return path


@pytest.fixture
def detector(repository: Path) -> Iterator[ServiceHandle]:
    handle = start_detector(repository)
    yield handle
    handle.close()


@dataclass(frozen=True)
class SharedEncoders:
    """The tiny ViT ("vit") and MiniLM ("text"), made once per session, with one export cache:
    the embedders of tests that serve them (and do not test the export itself, which
    tests/embedder/test_export.py does) export them once between them, not once each."""

    models: dict[str, ModelSource]
    cache_dir: Path

    def only(self, *names: str) -> dict[str, ModelSource]:
        return {name: self.models[name] for name in names}

    def exported(self, name: str) -> Path:
        """The model's export in the session's cache (made on first use)."""
        return ensure_exported(self.models[name], self.cache_dir)

    def copy_export(self, name: str, cache_dir: Path) -> None:
        """Put a copy of the model's export into another cache (e.g. a stack's), where a model
        of the same settings (MiniLM as a default text model) loads instead of exporting."""
        exported = self.exported(name)
        shutil.copytree(exported, cache_dir / exported.name)


@pytest.fixture(scope="session")
def shared_encoders(tmp_path_factory) -> SharedEncoders:
    root = tmp_path_factory.mktemp("shared-encoders")
    return SharedEncoders(encoders.vit_and_minilm(root), root / "cache")
