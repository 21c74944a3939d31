"""`oddity-trainer`: settings -> app -> host -> run until SIGTERM.

Reason to change: how the trainer process is started.
"""

from __future__ import annotations

import sys

from oddity.common.server import run_service
from oddity.trainer.app import TrainerApp
from oddity.trainer.settings import TrainerSettings


def main(argv: list[str] | None = None) -> int:
    return run_service(TrainerApp, TrainerSettings, "trainer", argv)


if __name__ == "__main__":
    sys.exit(main())
