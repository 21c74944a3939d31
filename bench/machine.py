"""What machine a benchmark ran on, printed first by every benchmark: figures from machines
of the same kind differ up to 3x (CPU model, vector instructions, cores), so a figure is only
compared with one from the same CPU and ISA.

    python -m bench.machine
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# Vector extensions that decide which ONNX Runtime and torch kernels run, widest last.
VECTOR_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "neon",
    "asimd",
    "sve",
)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def vector_isa() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
            break
    return [flag for flag in VECTOR_FLAGS if flag in flags]


def describe() -> str:
    """One line: CPU model, vector ISA, cores usable by this process, Python and ONNX Runtime."""
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"machine: {cpu_model()} | ISA {' '.join(vector_isa()) or 'unknown'} | {cores} cores | "
        f"{platform.machine()} | Python {platform.python_version()} | onnxruntime {ort}"
    )


if __name__ == "__main__":
    print(describe())
