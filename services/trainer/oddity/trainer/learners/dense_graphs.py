"""Dense torch networks written as ONNX graphs from their weights: standardization, then
linear layers with ReLU between them. The autoencoder and the MLP classifier export through
here rather than torch.onnx's TorchScript exporter, which torch has deprecated and will
remove (its successor needs onnxscript and writes a different graph for the same network).

Reason to change: how dense networks are written as ONNX graphs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from oddity.common import bundle
from oddity.common.bundle.contract import PREDICTED_SCORE_OUTPUT
from oddity.trainer.onnx_graphs import contract_model


def linear_layers(modules: Iterable[Any]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight [in, out], bias [out]) of torch Linear modules."""
    return [
        (m.weight.detach().numpy().T.astype(np.float32), m.bias.detach().numpy().astype(np.float32)) for m in modules
    ]


@dataclass
class GraphBuilder:
    """Nodes and initializers of one graph, under one name prefix."""

    prefix: str
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        full = f"{self.prefix}{name}"
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), full))
        return full

    def node(self, op: str, inputs: Sequence[str], output: str, **attributes: Any) -> str:
        """One node with one output; `output` is prefixed unless it is a graph output."""
        name = output if output in _GRAPH_NAMES else f"{self.prefix}{output}"
        self.nodes.append(helper.make_node(op, list(inputs), [name], **attributes))
        return name

    def standardized(self, source: str, mean: np.ndarray, scale: np.ndarray) -> str:
        centred = self.node("Sub", [source, self.const("mean", mean)], "centred")
        return self.node("Div", [centred, self.const("scale", scale)], "z")

    def dense(
        self, source: str, layers: Sequence[tuple[np.ndarray, np.ndarray]], name: str, *, relu_last: bool = False
    ) -> str:
        """Linear layers with ReLU between them (and after the last with `relu_last`)."""
        h = source
        for i, (weight, bias) in enumerate(layers):
            product = self.node("MatMul", [h, self.const(f"{name}{i}_weight", weight)], f"{name}{i}_product")
            h = self.node("Add", [product, self.const(f"{name}{i}_bias", bias)], f"{name}{i}_linear")
            if relu_last or i < len(layers) - 1:
                h = self.node("Relu", [h], f"{name}{i}_relu")
        return h

    def model(self, name: str, d: int, outputs: Sequence[onnx.ValueInfoProto]) -> bytes:
        graph = helper.make_graph(
            self.nodes,
            name,
            [helper.make_tensor_value_info(bundle.INPUT_NAME, TensorProto.FLOAT, ["N", d])],
            list(outputs),
            self.initializers,
        )
        return contract_model(graph).SerializeToString()


_GRAPH_NAMES = {
    bundle.SCORE_OUTPUT,
    bundle.FEATURE_ERRORS_OUTPUT,
    bundle.LABEL_OUTPUT,
    bundle.PROBABILITIES_OUTPUT,
    PREDICTED_SCORE_OUTPUT,
}
