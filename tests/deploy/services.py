"""What the deploy tests know about each service, taken from the code and the pyprojects (never
restated by hand): distribution, console script, settings class and env prefix, gRPC health
service name and default ports."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pydantic_settings import BaseSettings

from oddity.detector.settings import DetectorSettings
from oddity.embedder.settings import EmbedderSettings
from oddity.trainer.settings import TrainerSettings
from oddity.v1 import detector_pb2, embedder_pb2, trainer_pb2

REPO = Path(__file__).resolve().parents[2]
#: The uid (and gid) the images run as and the manifests require.
UID = 10001


@dataclass(frozen=True)
class Service:
    name: str  # detector, embedder, trainer
    settings: type[BaseSettings]
    health_service: str  # grpc.health.v1 name of readiness, e.g. oddity.v1.Detector

    @property
    def folder(self) -> Path:
        return REPO / "services" / self.name

    @property
    def pyproject(self) -> dict:
        return _pyproject(self.folder / "pyproject.toml")

    @property
    def distribution(self) -> str:
        return self.pyproject["project"]["name"]

    @property
    def console_script(self) -> str:
        """The script whose entry point is the service's main()."""
        (script,) = [
            name
            for name, target in self.pyproject["project"]["scripts"].items()
            if target == f"oddity.{self.name}.main:main"
        ]
        return script

    @property
    def env_prefix(self) -> str:
        return str(self.settings.model_config["env_prefix"])

    def setting_names(self) -> set[str]:
        return {self.env_prefix + field.upper() for field in self.settings.model_fields}

    def default(self, field: str):
        return self.settings.model_fields[field].default

    @property
    def dockerfile(self) -> Path:
        return self.folder / "Dockerfile"


SERVICES = {
    "detector": Service("detector", DetectorSettings, detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name),
    "embedder": Service("embedder", EmbedderSettings, embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name),
    "trainer": Service("trainer", TrainerSettings, trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name),
}


@cache
def _pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def distribution_folders() -> dict[str, str]:
    """Every distribution of the workspace by name -> its folder relative to the repository."""
    return {
        _pyproject(path)["project"]["name"]: str(path.parent.relative_to(REPO))
        for path in sorted((REPO / "services").glob("*/pyproject.toml"))
    }
