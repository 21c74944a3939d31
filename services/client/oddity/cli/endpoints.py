"""The three services as the command line knows them: default ports, the env vars that find
them, the module and distribution that run them. `up`, `demo`, the connection options and
the stack read this table; nothing else writes a port.

    service    gRPC    metrics   clients find it at        its own settings
    embedder   50051   9101      ODDITY_EMBEDDER_TARGET    ODDITY_EMBEDDER_*
    detector   50052   9102      ODDITY_DETECTOR_TARGET    ODDITY_DETECTOR_*
    trainer    50053   9103      ODDITY_TRAINER_TARGET     ODDITY_TRAINER_*

The ports are each service's own defaults (its settings module; a test keeps them equal), so
a service started by hand and `oddity up` listen where the commands look by default.

Reason to change: a service's default address or env names, or a new service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Service = Literal["embedder", "detector", "trainer"]
DEFAULT_HOST = "127.0.0.1"
# `oddity up --metrics-port-base`: each service's metrics port is the base plus its offset.
METRICS_PORT_BASE = 9100


@dataclass(frozen=True)
class ServiceEndpoint:
    """One service's defaults and names."""

    service: Service
    port: int  # gRPC
    metrics_port: int
    target_env: str  # the address commands and the SDK's users call it at
    settings_env_prefix: str  # the service's own settings (ODDITY_DETECTOR_PORT, ...)
    module: str  # `python -m <module>` runs it
    distribution: str  # what to pip install

    @property
    def default_target(self) -> str:
        return f"{DEFAULT_HOST}:{self.port}"

    @property
    def metrics_offset(self) -> int:
        return self.metrics_port - METRICS_PORT_BASE


def _endpoint(service: Service, port: int, metrics_port: int) -> ServiceEndpoint:
    upper = service.upper()
    return ServiceEndpoint(
        service=service,
        port=port,
        metrics_port=metrics_port,
        target_env=f"ODDITY_{upper}_TARGET",
        settings_env_prefix=f"ODDITY_{upper}_",
        module=f"oddity.{service}.main",
        distribution=f"oddity-{service}",
    )


# In start order: the detector and the trainer call the embedder, the trainer calls the detector.
ENDPOINTS: dict[Service, ServiceEndpoint] = {
    "embedder": _endpoint("embedder", 50051, 9101),
    "detector": _endpoint("detector", 50052, 9102),
    "trainer": _endpoint("trainer", 50053, 9103),
}
SERVICES: tuple[Service, ...] = tuple(ENDPOINTS)
