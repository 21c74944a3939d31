"""`oddity-detector`: settings -> app -> host -> run until SIGTERM.

Reason to change: how the detector process is started.
"""

from __future__ import annotations

import sys

from oddity.common.server import run_service
from oddity.detector.app import DetectorApp
from oddity.detector.settings import DetectorSettings


def main(argv: list[str] | None = None) -> int:
    return run_service(DetectorApp, DetectorSettings, "detector", argv)


if __name__ == "__main__":
    sys.exit(main())
