"""The runtimes an exported encoder can be served by: ONNX Runtime and OpenVINO, one call
each with the same inputs (the graph's named arrays) and output (the embedding rows).

OpenVINO (the `openvino` runtime, not ONNX Runtime's execution provider) reads the ONNX graph
itself. Its precision is set with INFERENCE_PRECISION_HINT: "f32" for fp32 and int8 graphs
(OpenVINO would otherwise pick bf16 on CPUs with AMX), "bf16" where the CPU reports BF16 in
OPTIMIZATION_CAPABILITIES. Int8 graphs with QuantizeLinear/DequantizeLinear pairs run on
OpenVINO's int8 kernels (VNNI, AMX); ONNX Runtime's dynamic int8 graphs do not (OpenVINO ran
them slower than fp32). Needs no torch.

Reason to change: how a graph is run by one runtime.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import onnxruntime as ort

from oddity.embedder.session_options import SessionConfig

BackendName = Literal["onnxruntime", "openvino"]
Precision = Literal["fp32", "int8", "bf16"]
OPENVINO_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}


class Backend(Protocol):
    input_names: list[str]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class OnnxRuntimeBackend:
    def __init__(self, graph: Path, session: SessionConfig) -> None:
        self.session = ort.InferenceSession(str(graph), session.session_options(), providers=list(session.providers))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["embedding"], inputs)[0].astype(np.float32, copy=False)


class OpenVinoBackend:
    """One compiled model and one infer request: the embedder runs one call at a time."""

    def __init__(self, graph: Path, precision: Precision, session: SessionConfig) -> None:
        ov = _openvino()
        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(str(graph)),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
                "INFERENCE_NUM_THREADS": session.threads,
                "PERFORMANCE_HINT": "LATENCY",
                # Threads pinned to cores stall when gRPC, image decoding or another process
                # takes a core (ViT-base int8 on a loaded 2-core Xeon: 0.46-1.9 images/s
                # pinned, 1.1-2.5 not).
                "ENABLE_CPU_PINNING": False,
            },
        )
        self.input_names = [port.any_name for port in compiled.inputs]
        self._output = compiled.output("embedding")
        self._request = compiled.create_infer_request()

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        result = self._request.infer(inputs)
        return np.array(result[self._output], dtype=np.float32)


def open_backend(graph: Path, backend: BackendName, precision: Precision, session: SessionConfig) -> Backend:
    if backend == "openvino":
        if openvino_version() is None:
            raise ValueError(f"{graph} was chosen to run on OpenVINO, which is not installed: pip install openvino")
        return OpenVinoBackend(graph, precision, session)
    return OnnxRuntimeBackend(graph, session)


def openvino_version() -> str | None:
    """The installed OpenVINO runtime's version, or None."""
    try:
        ov = _openvino()
    except ImportError:
        return None
    return str(ov.get_version())


def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports bf16 kernels on this CPU (AMX, AVX512-BF16)."""
    return "BF16" in _openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _openvino() -> Any:
    """The openvino module with its usage telemetry off: reading an ONNX graph otherwise forks a
    process that sends usage data to Intel's analytics (and gRPC logs a line about the fork). A
    module set to None cannot be imported, so openvino takes its own stand-in."""
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino  # type: ignore[import-untyped]  # no type information shipped

    return openvino
