"""`oddity-detector`: process-wide settings -> settings -> app -> host -> run until SIGTERM.

Reason to change: how the detector process is started.
"""

from __future__ import annotations

import sys

import faiss

from oddity.common.server import run_service
from oddity.detector.app import DetectorApp
from oddity.detector.settings import DetectorSettings

# FAISS's OpenMP threads per search: one, since the server already runs searches concurrently
# and OpenMP threads on a few cores only contend. (ONNX Runtime has no process-wide thread
# setting in use: each session gets its threads from SessionConfig.)
FAISS_THREADS = 1


def configure_process() -> None:
    """Settings that hold for the whole process, made once before the app is built."""
    faiss.omp_set_num_threads(FAISS_THREADS)


def main(argv: list[str] | None = None) -> int:
    configure_process()
    return run_service(DetectorApp, DetectorSettings, "detector", argv)


if __name__ == "__main__":
    sys.exit(main())
