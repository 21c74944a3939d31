"""`oddity-trainer`: settings -> app -> host -> run until SIGTERM."""

from __future__ import annotations

import asyncio
import sys

from oddity.common.logging import configure_logging
from oddity.common.metrics import new_registry
from oddity.common.server import ServiceHost, run_until_signal
from oddity.common.settings import load_settings
from oddity.trainer.app import TrainerApp
from oddity.trainer.settings import TrainerSettings


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(TrainerSettings, argv)
    configure_logging(level=settings.log_level, json=settings.log_json, service="trainer")
    registry = new_registry()
    host = ServiceHost(TrainerApp(settings, registry), settings, registry=registry)
    asyncio.run(run_until_signal([host]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
