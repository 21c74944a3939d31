"""`oddity-embedder`: settings -> app -> host -> run until SIGTERM.

Reason to change: the console script.
"""

from __future__ import annotations

import sys

from oddity.common.server import run_service
from oddity.embedder.app import EmbedderApp
from oddity.embedder.settings import EmbedderSettings


def main(argv: list[str] | None = None) -> int:
    return run_service(EmbedderApp, EmbedderSettings, "embedder", argv)


if __name__ == "__main__":
    sys.exit(main())
