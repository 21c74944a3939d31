"""Int8 graphs made at export: dynamic quantization gated by cosine similarity to the fp32
graph, and static quantization (QuantizeLinear/DequantizeLinear pairs, calibrated) for
runtimes with int8 kernels for that form (OpenVINO; ONNX Runtime runs it too).

Weights become int8; activations are quantized per call (MatMulInteger / QAttention run on
the CPU's int8 dot-product instructions, VNNI where the CPU has them). Measured on ViT-base
(random weights, AMD EPYC Zen 4 with AVX-512 VNNI, bench/embedder_speed.py): per-tensor and
per-channel weights ran within noise of each other (cosine to fp32 0.9986 and 0.9991);
reduce_range (7-bit weights, meant for CPUs without VNNI) dropped the cosine to 0.9969 with no
speed gain; quantizing only the weight MatMuls (not QK^T and attention x V) was slower. The
variants are tried in that order and the first whose embeddings keep a cosine of at least
`min_cosine` to fp32 on every sample input is kept; when none does, the export fails and says
which cosines were reached. all-MiniLM-L6-v2 reaches 0.85-0.97 only: quantizing any single
one of several of its MatMuls already costs more than 0.002 (outlier activations, which
per-tensor dynamic activation scales cannot follow), so it serves in fp32. Static
quantization reached 0.993-0.994 on it as well (calibrated on eight sentences), also with the
MatMuls of the largest activation ranges left in fp32 (1 to 8 of 48): the loss is spread, not
in a few layers.

Reason to change: how encoders are quantized and when a quantized graph is good enough.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class QuantizationRejected(Exception):
    """No variant kept the embeddings close enough to fp32."""


@dataclass(frozen=True)
class Variant:
    name: str
    per_channel: bool = False
    reduce_range: bool = False
    # Conv (the patch embedding) and Gather (token embeddings) stay float: ConvInteger ran ~3x
    # slower than the float Conv, and an int8 embedding table costs text models accuracy.
    op_types: tuple[str, ...] = ("MatMul", "Attention")
    weights_only: bool = False  # quantize only MatMuls by a constant weight (not QK^T, attention x V)


# Fastest first; later ones trade speed for accuracy.
VARIANTS = (
    Variant("per-tensor"),
    Variant("per-channel", per_channel=True),
    Variant("per-tensor, weight MatMuls only", weights_only=True),
    Variant("per-channel, weight MatMuls only", per_channel=True, weights_only=True),
)


@dataclass
class Quantized:
    variant: str
    min_cosine: float
    tried: dict[str, float]

    def as_meta(self) -> dict:
        return {"variant": self.variant, "min_cosine": self.min_cosine, "tried": self.tried}


def quantize(
    source: Path,
    target: Path,
    *,
    min_cosine: float,
    outputs_of: Callable[[Path], np.ndarray],
    variants: tuple[Variant, ...] = VARIANTS,
) -> Quantized:
    """Write the first variant of `source` that passes the gate to `target`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reference = outputs_of(source)
    tried: dict[str, float] = {}
    for variant in variants:
        quantize_dynamic(
            source,
            target,
            weight_type=QuantType.QInt8,
            per_channel=variant.per_channel,
            reduce_range=variant.reduce_range,
            op_types_to_quantize=list(variant.op_types),
            # Fused graphs carry contrib ops shape inference cannot type: their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": variant.weights_only},
        )
        cosine = float(cosine_rows(outputs_of(target), reference).min())
        tried[variant.name] = round(cosine, 6)
        if cosine >= min_cosine:
            return Quantized(variant.name, round(cosine, 6), tried)
    target.unlink(missing_ok=True)
    reached = ", ".join(f"{name}: {cosine:.6f}" for name, cosine in tried.items())
    raise QuantizationRejected(
        f"int8 embeddings are too far from fp32 on the sample inputs (lowest cosine per variant: {reached}; "
        f"the gate is {min_cosine}): serve this model in fp32, or lower its min_cosine"
    )


def quantize_static_qdq(source: Path, target: Path, calibration: dict[str, np.ndarray]) -> None:
    """MatMuls in int8 with activation ranges calibrated on `calibration` (min/max), weights per
    channel; QDQ form, which OpenVINO turns into its own int8 kernels."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class OneBatch(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    quantize_static(
        source,
        target,
        OneBatch(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        # Fused graphs carry contrib ops shape inference cannot type: their outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
