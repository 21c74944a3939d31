"""ONNX Runtime's transformer optimizer applied to an exported encoder: LayerNorm and GELU
subgraphs (and, when asked, attention) fused into single kernels (SkipLayerNormalization,
BiasGelu, Attention).

The optimizer matches the graphs transformers 4.x exported. Two rewrites let it match the
eager attention of transformers 5.x as well: float-to-float Cast pairs around the softmax
are dropped, and the score scaling `Mul(QK, 1/sqrt(d))` becomes `Div(QK, sqrt(d))` (the
same value: the scale is a power of two for the usual head sizes). The optimized graph is
kept only when its outputs match the unoptimized graph's on sample inputs; otherwise the
unoptimized graph serves and the reason is recorded.

Needs onnx and onnxruntime only (runs at export time).

Reason to change: how exported graphs are fused for ONNX Runtime.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Hugging Face model types -> the optimizer's model type (its fusion patterns).
OPTIMIZER_TYPES = {
    "vit": "vit",
    "dinov2": "vit",
    "clip": "vit",  # the vision tower: a pre-LN ViT
    "clip_vision_model": "vit",
    "deit": "vit",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "mpnet": "bert",
    "distilbert": "bert",
    "electra": "bert",
}
# Fusion changes summation order only: outputs agree to float32 rounding.
PARITY_MIN_COSINE = 0.99999
PARITY_RTOL = 1e-3


@dataclass
class Optimization:
    """What the optimizer did: applied (fused operator counts) or skipped (why)."""

    applied: bool
    fused: dict[str, int] = field(default_factory=dict)
    reason: str = ""

    def as_meta(self) -> dict:
        return {"applied": self.applied, "fused": self.fused, "reason": self.reason}


def optimize(
    source: Path,
    target: Path,
    *,
    hf_model_type: str,
    num_heads: int,
    hidden_size: int,
    outputs_of: Callable[[Path], np.ndarray],
    attention: bool = True,
) -> Optimization:
    """Write the fused graph of `source` to `target` when the optimizer knows the model type,
    fuses something, and `outputs_of(target)` matches `outputs_of(source)`; else leave
    `target` unwritten and say why."""
    model_type = OPTIMIZER_TYPES.get(hf_model_type)
    if model_type is None:
        return Optimization(False, reason=f"no fusion patterns for model type {hf_model_type!r}")
    import onnx
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    model = onnx.load(str(source))
    _match_transformers_5_attention(model)
    options = FusionOptions(model_type)
    options.enable_attention = attention
    with _optimizer_lines_at_debug():
        try:
            # opt_level 0: the optimizer's own fusions only; ONNX Runtime's graph optimizations
            # run when a session loads the graph, for the provider it runs on.
            optimized = optimizer.optimize_model(
                model,
                model_type=model_type,
                num_heads=num_heads,
                hidden_size=hidden_size,
                optimization_options=options,
                opt_level=0,
            )
        except Exception as exc:  # the optimizer raises on patterns it half-matches
            return Optimization(False, reason=f"optimizer failed: {type(exc).__name__}: {exc}")
        fused = {name: int(count) for name, count in optimized.get_fused_operator_statistics().items() if count}
        if not fused:
            return Optimization(False, reason="the optimizer found nothing to fuse")
        optimized.save_model_to_file(str(target))
    expected, got = outputs_of(source), outputs_of(target)
    cosine = float(_cosine(expected, got).min())
    close = np.allclose(got, expected, rtol=PARITY_RTOL, atol=PARITY_RTOL * float(np.abs(expected).max()))
    if cosine < PARITY_MIN_COSINE or not close:
        target.unlink()
        return Optimization(
            False,
            fused,
            reason=f"fused graph differs from the exported one (cosine {cosine:.6f}, "
            f"max abs difference {float(np.abs(got - expected).max()):.2e})",
        )
    return Optimization(True, fused)


class _DebugLevel(logging.Filter):
    """The transformer optimizer logs a line per fusion at info, from loggers named after its
    modules (fusion_base, onnx_model, ...): those lines go to debug, so a console at info stays
    quiet and the JSON logs keep them at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and _OPTIMIZER_PATH in record.pathname:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_OPTIMIZER_PATH = f"{os.sep}onnxruntime{os.sep}transformers{os.sep}"


@contextmanager
def _optimizer_lines_at_debug() -> Iterator[None]:
    handlers = list(logging.getLogger().handlers)
    demote = _DebugLevel()
    for handler in handlers:
        handler.addFilter(demote)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(demote)


def _match_transformers_5_attention(model) -> None:
    """Rewrite, in place, the two spots where transformers 5.x's eager attention differs from
    the patterns the optimizer knows."""
    from onnx import TensorProto, numpy_helper, shape_inference

    graph = model.graph
    types = {
        info.name: info.type.tensor_type.elem_type
        for info in [*shape_inference.infer_shapes(model).graph.value_info, *graph.input, *graph.initializer]
        if hasattr(info, "type")
    }
    types.update({init.name: init.data_type for init in graph.initializer})
    outputs = {o.name for o in graph.output}
    renamed: dict[str, str] = {}
    kept = []
    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if (
            node.op_type == "Cast"
            and to == TensorProto.FLOAT
            and types.get(node.input[0]) == TensorProto.FLOAT
            and node.output[0] not in outputs
        ):
            renamed[node.output[0]] = node.input[0]  # a no-op cast (dropout's dtype round trip)
            continue
        kept.append(node)
    for node in kept:
        for index, name in enumerate(node.input):
            while name in renamed:
                name = renamed[name]
            node.input[index] = name
    del graph.node[:]
    graph.node.extend(kept)
    kept = list(graph.node)  # extend copied the nodes: edit the graph's own from here on

    constants = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in kept if n.op_type == "Constant"}
    constants.update({init.name: numpy_helper.to_array(init) for init in graph.initializer})
    consumers: dict[str, list] = {}
    for node in kept:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in kept:
        if node.op_type != "Mul" or len(node.input) != 2:
            continue
        after = consumers.get(node.output[0], [])
        # Scores scaled, then (masked and) softmaxed.
        if not after or after[0].op_type not in ("Softmax", "Add"):
            continue
        if after[0].op_type == "Add" and not any(c.op_type == "Softmax" for c in consumers.get(after[0].output[0], [])):
            continue
        scale = constants.get(node.input[1])
        if scale is None or scale.size != 1 or float(scale.reshape(())) == 0.0:
            continue
        divisor = f"{node.input[1]}_reciprocal"
        if divisor not in constants:
            graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(scale.dtype), divisor))
            constants[divisor] = scale
        node.op_type = "Div"
        node.input[1] = divisor


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
