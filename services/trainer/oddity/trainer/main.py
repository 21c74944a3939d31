"""`oddity-trainer`: settings -> app -> host -> run until SIGTERM.

Reason to change: how the trainer process is started.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry

from oddity.common.server import run_service
from oddity.common.settings import ServiceSettings
from oddity.trainer.app import TrainerApp
from oddity.trainer.settings import TrainerSettings


def make_app(settings: ServiceSettings, metrics_registry: CollectorRegistry) -> TrainerApp:
    if not isinstance(settings, TrainerSettings):
        raise TypeError(f"the trainer needs TrainerSettings, got {type(settings).__name__}")
    return TrainerApp(settings, metrics_registry)


def main(argv: list[str] | None = None) -> int:
    return run_service(make_app, TrainerSettings, "trainer", argv)


if __name__ == "__main__":
    sys.exit(main())
