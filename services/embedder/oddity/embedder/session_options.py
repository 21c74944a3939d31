"""ONNX Runtime session settings for the embedder's encoders, chosen for the CPU it runs on.

Measured on 2-core AMD EPYC machines (bench/embedder_speed.py):
- threads: one intra-op thread per usable core (os.sched_getaffinity, so container CPU sets
  count); MatMul is ~90% of a ViT call and MLAS splits it across threads.
- spinning off: spinning made no consistent difference in ViT-base calls (int8: 65 vs 67
  ms/image), and a spinning pool burns the cores gRPC, image decoding and other processes
  need between calls. Turn it on (intra_op_spinning) to compare on a dedicated host.
- graph optimization "all": layout transforms and MLAS-specific fusions on top of the fused
  graph the export wrote.
- providers: CPU by default; CUDAExecutionProvider when onnxruntime-gpu is installed (ONNX
  Runtime falls back to CPU for nodes CUDA cannot run). A provider this onnxruntime does not
  have is refused at start, naming the ones it has.

Reason to change: how ONNX Runtime sessions are configured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnxruntime as ort

GRAPH_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class ProviderUnavailable(ValueError):
    """A configured execution provider is not in this onnxruntime build."""


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_providers(providers: list[str]) -> list[str]:
    """The providers as given, when this onnxruntime has every one of them."""
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        cuda = "CUDAExecutionProvider" in missing
        hint = " (install onnxruntime-gpu in place of onnxruntime for CUDA)" if cuda else ""
        raise ProviderUnavailable(
            f"execution provider(s) {missing} not available in onnxruntime {ort.__version__}; "
            f"available: {available}{hint}"
        )
    if not providers:
        raise ProviderUnavailable(f"no execution provider given; available: {available}")
    return providers


@dataclass(frozen=True)
class SessionConfig:
    intra_op_threads: int = 0  # 0: one per usable core
    spinning: bool = False
    graph_optimization: str = "all"
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @property
    def threads(self) -> int:
        return self.intra_op_threads or usable_cores()

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1  # encoders are one chain of ops
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = GRAPH_LEVELS[self.graph_optimization]
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        return options

    def describe(self) -> dict:
        """What is chosen, for the log line at load."""
        return {
            "intra_op_threads": self.threads,
            "spinning": self.spinning,
            "graph_optimization": self.graph_optimization,
            "providers": list(self.providers),
        }
