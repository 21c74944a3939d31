"""Which runtime and precision serve an encoder on this machine, chosen at export by measuring.

The candidates: ONNX Runtime fp32 (the reference), int8 static and, only when int8 is forced,
int8 dynamic (whose vectors depend on the batch); OpenVINO fp32, int8 static and, where the
CPU reports BF16, bf16. Each runs the sample batch in
alternating timed rounds (load from other processes hits all alike), and the fastest whose
embeddings keep `min_cosine` to ONNX Runtime fp32's on every sample serves. No table of CPUs:
on Intel with AMX, OpenVINO bf16 ran ViT-base at 4.0x torch eager; on a Xeon without BF16
(AVX-512 VNNI) OpenVINO int8 static ran it ~7x ONNX Runtime fp32 and ONNX Runtime's own int8
~3x; on AMD EPYC the figures differ again. A forced backend or precision narrows the
candidates; openvino not installed leaves the ONNX Runtime ones (and says so).

Runs at export (needs onnx and onnxruntime's quantization tools; no torch).

Reason to change: how the serving runtime and precision are chosen.
"""

from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oddity.common.logging import get_logger
from oddity.embedder.backends import BackendName, OnnxRuntimeBackend, Precision, open_backend, openvino_has_bf16
from oddity.embedder.backends import openvino_version as installed_openvino
from oddity.embedder.models import ModelSource
from oddity.embedder.quantization import QuantizationRejected, cosine_rows, quantize, quantize_static_qdq
from oddity.embedder.session_options import SessionConfig

log = get_logger("oddity.embedder")

FP32_GRAPH = "model.onnx"
DYNAMIC_INT8_GRAPH = "model.int8.onnx"
STATIC_INT8_GRAPH = "model.qdq.onnx"
TIMED_ROUNDS = 3  # after one untimed call (which also gives the cosine)


class NoCandidateKept(Exception):
    """No candidate can serve under the settings, or none kept the cosine gate."""


@dataclass(frozen=True)
class Candidate:
    backend: BackendName
    precision: Precision
    graph: str

    @property
    def name(self) -> str:
        kind = {DYNAMIC_INT8_GRAPH: " dynamic", STATIC_INT8_GRAPH: " static"}.get(self.graph, "")
        return f"{self.backend} {self.precision}{kind}"


ONNXRUNTIME_FP32 = Candidate("onnxruntime", "fp32", FP32_GRAPH)
ONNXRUNTIME = (
    ONNXRUNTIME_FP32,
    Candidate("onnxruntime", "int8", DYNAMIC_INT8_GRAPH),
    Candidate("onnxruntime", "int8", STATIC_INT8_GRAPH),
)
OPENVINO = (
    Candidate("openvino", "fp32", FP32_GRAPH),
    Candidate("openvino", "int8", STATIC_INT8_GRAPH),
)
OPENVINO_BF16 = Candidate("openvino", "bf16", FP32_GRAPH)


@dataclass
class Measured:
    candidate: Candidate
    outcome: str  # chosen, kept (passed the gate, slower), below the cosine gate, or why it did not run
    items_per_second: float | None = None
    cosine: float | None = None

    def as_meta(self) -> dict:
        return {
            "name": self.candidate.name,
            "backend": self.candidate.backend,
            "precision": self.candidate.precision,
            "graph": self.candidate.graph,
            "items_per_second": self.items_per_second,
            "cosine": self.cosine,
            "outcome": self.outcome,
        }


@dataclass
class Choice:
    chosen: Candidate
    setting: dict[str, str]
    min_cosine: float
    measured: list[Measured]
    notes: list[str]
    quantization: dict | None  # the dynamic int8 variants tried, when they were

    def as_meta(self) -> dict:
        return {
            "chosen": self.chosen.name,
            "setting": self.setting,
            "min_cosine": self.min_cosine,
            "cpu": cpu_name(),
            "openvino": installed_openvino(),
            "candidates": [m.as_meta() for m in self.measured],
            "notes": self.notes,
        }


def candidates(source: ModelSource) -> tuple[list[Candidate], list[str]]:
    """The candidates the settings allow on this machine, and notes on what is missing."""
    notes = []
    pool = list(ONNXRUNTIME)
    if installed_openvino() is None:
        notes.append("openvino is not installed: ONNX Runtime candidates only (pip install openvino)")
    else:
        pool += OPENVINO
        if openvino_has_bf16():
            pool.append(OPENVINO_BF16)
        else:
            notes.append("this CPU reports no BF16 to OpenVINO: no bf16 candidate")
    allowed = [c for c in pool if source.backend in ("auto", c.backend) and source.precision in ("auto", c.precision)]
    if source.precision == "auto":
        # Dynamic int8 scales each batch by its own range, so an item's vector depends on the
        # items batched with it (an image searched alone found itself at cosine 0.991): the
        # index and the detector compare vectors made in different batches. Only when forced.
        allowed = [c for c in allowed if c.graph != DYNAMIC_INT8_GRAPH]
    if not allowed:
        raise NoCandidateKept(
            f"no candidate runs backend {source.backend!r} in precision {source.precision!r} here ({'; '.join(notes)})"
        )
    return allowed, notes


def choose(
    folder: Path,
    source: ModelSource,
    inputs: dict[str, np.ndarray],
    calibration: dict[str, np.ndarray],
    session: SessionConfig | None = None,
) -> Choice:
    """Make the candidates' graphs in `folder`, measure them on `inputs` and keep the fastest
    that passes the gate. Graphs not chosen are deleted."""
    session = session or SessionConfig()
    allowed, notes = candidates(source)
    reference = OnnxRuntimeBackend(folder / FP32_GRAPH, session)(inputs)
    missing, quantization = make_graphs(folder, allowed, source, inputs, calibration, session)
    runnable = [c for c in allowed if c.graph not in missing]
    ran = _measure(folder, runnable, inputs, reference, source.min_cosine, session)
    measured = [ran.get(c) or Measured(c, missing[c.graph]) for c in allowed]
    kept = [m for m in measured if m.outcome == "kept"]
    if not kept:
        figures = "; ".join(_figure(m) for m in measured)
        raise NoCandidateKept(f"no candidate keeps cosine >= {source.min_cosine} to ONNX Runtime fp32: {figures}")
    best = max(kept, key=lambda m: m.items_per_second or 0.0)
    best.outcome = "chosen"
    for graph in {DYNAMIC_INT8_GRAPH, STATIC_INT8_GRAPH, FP32_GRAPH} - {best.candidate.graph}:
        (folder / graph).unlink(missing_ok=True)
    choice = Choice(
        best.candidate,
        {"backend": source.backend, "precision": source.precision},
        source.min_cosine,
        measured,
        notes,
        quantization,
    )
    log.info(
        "backend chosen",
        model_id=source.model_id,
        chosen=best.candidate.name,
        setting=choice.setting,
        candidates=[_figure(m) for m in measured],
        notes=notes,
    )
    return choice


def make_graphs(
    folder: Path,
    allowed: list[Candidate],
    source: ModelSource,
    inputs: dict[str, np.ndarray],
    calibration: dict[str, np.ndarray],
    session: SessionConfig,
) -> tuple[dict[str, str], dict | None]:
    """Write the int8 graphs the candidates need beside the fp32 one: the graphs that could not
    be made (with why), and the dynamic int8 variants tried."""
    graphs = {c.graph for c in allowed}
    missing: dict[str, str] = {}
    quantization = None
    if DYNAMIC_INT8_GRAPH in graphs:
        try:
            quantized = quantize(
                folder / FP32_GRAPH,
                folder / DYNAMIC_INT8_GRAPH,
                min_cosine=source.min_cosine,
                outputs_of=lambda path: OnnxRuntimeBackend(path, session)(inputs),
            )
            quantization = quantized.as_meta()
        except QuantizationRejected as exc:
            missing[DYNAMIC_INT8_GRAPH] = str(exc)
    if STATIC_INT8_GRAPH in graphs:
        quantize_static_qdq(folder / FP32_GRAPH, folder / STATIC_INT8_GRAPH, calibration)
    return missing, quantization


def _measure(
    folder: Path,
    candidates: list[Candidate],
    inputs: dict[str, np.ndarray],
    reference: np.ndarray,
    min_cosine: float,
    session: SessionConfig,
) -> dict[Candidate, Measured]:
    runners = {}
    measured = {}
    for candidate in candidates:
        try:
            runner = open_backend(folder / candidate.graph, candidate.backend, candidate.precision, session)
            cosine = float(cosine_rows(runner(inputs), reference).min())
        except Exception as exc:  # a runtime that cannot compile or run this graph is no candidate
            measured[candidate] = Measured(candidate, f"did not run: {type(exc).__name__}: {exc}"[:300])
            continue
        passed = cosine >= min_cosine
        measured[candidate] = Measured(
            candidate, "kept" if passed else "below the cosine gate", cosine=round(cosine, 6)
        )
        runners[candidate] = runner
    seconds: dict[Candidate, list[float]] = {c: [] for c in runners}
    for _ in range(TIMED_ROUNDS):
        for candidate, runner in runners.items():
            began = time.perf_counter()
            runner(inputs)
            seconds[candidate].append(time.perf_counter() - began)
    count = len(reference)
    for candidate, times in seconds.items():
        measured[candidate].items_per_second = round(count / statistics.median(times), 2)
    return measured


def _figure(measured: Measured) -> str:
    if measured.items_per_second is None:
        return f"{measured.candidate.name}: {measured.outcome}"
    return (
        f"{measured.candidate.name}: {measured.items_per_second} items/s, cosine {measured.cosine} ({measured.outcome})"
    )


def cpu_name() -> str:
    """The CPU's model name, as the measurements in the metadata were taken on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
