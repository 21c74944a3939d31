"""Composing ONNX graphs: a graph as a model the bundle contract's readers take
(`contract_model`), and an ensemble: several member graphs behind one input, each member's
score mapped onto the common ensemble scale, and their weighted mean as the score.

Reason to change: how the trainer's graphs become models, and how ensemble graphs are assembled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from oddity.common import bundle

_EPS = 1e-12


@dataclass
class MemberGraph:
    onnx_model: bytes
    table: np.ndarray  # out-of-fold score table (calibration.score_table)
    levels: np.ndarray
    weight: float


def contract_model(graph: onnx.GraphProto, opsets: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """`graph` as a checked model with the contract's IR version; `opsets`: domain -> version
    (default: the ONNX domain at the contract's opset)."""
    imports = opsets if opsets is not None else {"": bundle.OPSET}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in imports.items()])
    model.ir_version = bundle.IR_VERSION
    onnx.checker.check_model(model)
    return model


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(value, name)


def common_scale_nodes(prefix: str, score: str, table: np.ndarray, levels: np.ndarray, out: str):
    """Nodes and initializers computing calibration.to_common_scale(score) into `out`."""
    last = len(table) - 1
    span = max(float(table[-1] - table[len(table) // 2]), _EPS)
    p = prefix
    initializers = [
        _const(f"{p}table", table.astype(np.float32)),
        _const(f"{p}table_row", table.astype(np.float32)[None, :]),
        _const(f"{p}levels", levels.astype(np.float32)),
        _const(f"{p}one_i", np.array(1, dtype=np.int64)),
        _const(f"{p}zero_i", np.array(0, dtype=np.int64)),
        _const(f"{p}max_lower", np.array(last - 1, dtype=np.int64)),
        _const(f"{p}eps", np.array(_EPS, dtype=np.float32)),
        _const(f"{p}zero", np.array(0.0, dtype=np.float32)),
        _const(f"{p}one", np.array(1.0, dtype=np.float32)),
        _const(f"{p}top", np.array(table[-1], dtype=np.float32)),
        _const(f"{p}span", np.array(span, dtype=np.float32)),
        _const(f"{p}axis1", np.array([1], dtype=np.int64)),
    ]
    n = helper.make_node
    nodes = [
        n("Unsqueeze", [score, f"{p}axis1"], [f"{p}column"]),
        n("GreaterOrEqual", [f"{p}column", f"{p}table_row"], [f"{p}ge"]),
        n("Cast", [f"{p}ge"], [f"{p}ge_i"], to=TensorProto.INT64),
        n("ReduceSum", [f"{p}ge_i", f"{p}axis1"], [f"{p}count"], keepdims=0),
        n("Sub", [f"{p}count", f"{p}one_i"], [f"{p}below"]),
        n("Clip", [f"{p}below", f"{p}zero_i", f"{p}max_lower"], [f"{p}lower"]),
        n("Add", [f"{p}lower", f"{p}one_i"], [f"{p}upper"]),
        n("Gather", [f"{p}table", f"{p}lower"], [f"{p}v_lo"], axis=0),
        n("Gather", [f"{p}table", f"{p}upper"], [f"{p}v_hi"], axis=0),
        n("Gather", [f"{p}levels", f"{p}lower"], [f"{p}p_lo"], axis=0),
        n("Gather", [f"{p}levels", f"{p}upper"], [f"{p}p_hi"], axis=0),
        n("Sub", [score, f"{p}v_lo"], [f"{p}above_lo"]),
        n("Sub", [f"{p}v_hi", f"{p}v_lo"], [f"{p}width_raw"]),
        n("Max", [f"{p}width_raw", f"{p}eps"], [f"{p}width"]),
        n("Div", [f"{p}above_lo", f"{p}width"], [f"{p}t_raw"]),
        n("Clip", [f"{p}t_raw", f"{p}zero", f"{p}one"], [f"{p}t"]),
        n("Sub", [f"{p}p_hi", f"{p}p_lo"], [f"{p}p_step"]),
        n("Mul", [f"{p}t", f"{p}p_step"], [f"{p}p_part"]),
        n("Add", [f"{p}p_lo", f"{p}p_part"], [f"{p}inside"]),
        n("Sub", [score, f"{p}top"], [f"{p}over_raw"]),
        n("Max", [f"{p}over_raw", f"{p}zero"], [f"{p}over"]),
        n("Div", [f"{p}over", f"{p}span"], [f"{p}extension"]),
        n("Add", [f"{p}inside", f"{p}extension"], [out]),
    ]
    return nodes, initializers


def ensemble_graph(members: Sequence[MemberGraph], dimension: int, share_floor: float) -> bytes:
    """One graph: input -> every member -> common scale -> weighted mean = score; per-feature
    errors = weighted mean of each explaining member's error shares."""
    total = float(sum(m.weight for m in members))
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    opsets: dict[str, int] = {"": bundle.OPSET}
    weighted_scores: list[str] = []
    shares: list[tuple[str, float]] = []
    for i, member in enumerate(members):
        prefix = f"m{i}_"
        model = compose.add_prefix(onnx.load_from_string(member.onnx_model), prefix)
        for opset in model.opset_import:
            opsets[opset.domain] = max(opsets.get(opset.domain, 0), opset.version)
        graph = model.graph
        nodes.append(helper.make_node("Identity", [bundle.INPUT_NAME], [f"{prefix}{bundle.INPUT_NAME}"]))
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        score = f"{prefix}{bundle.SCORE_OUTPUT}"
        scale_nodes, scale_inits = common_scale_nodes(
            f"{prefix}cs_", score, member.table, member.levels, f"{prefix}common"
        )
        nodes.extend(scale_nodes)
        initializers.extend(scale_inits)
        initializers.append(_const(f"{prefix}weight", np.array(member.weight / total, dtype=np.float32)))
        nodes.append(helper.make_node("Mul", [f"{prefix}common", f"{prefix}weight"], [f"{prefix}weighted"]))
        weighted_scores.append(f"{prefix}weighted")
        if any(o.name == f"{prefix}{bundle.FEATURE_ERRORS_OUTPUT}" for o in graph.output):
            shares.append((prefix, member.weight))
    nodes.append(helper.make_node("Sum", weighted_scores, [bundle.SCORE_OUTPUT]))
    outputs = [helper.make_tensor_value_info(bundle.SCORE_OUTPUT, TensorProto.FLOAT, ["N"])]
    if shares:
        share_total = float(sum(w for _, w in shares))
        initializers += [
            _const("ens_axis1", np.array([1], dtype=np.int64)),
            _const("ens_eps", np.array(share_floor, dtype=np.float32)),
        ]
        parts = []
        for prefix, weight in shares:
            errors = f"{prefix}{bundle.FEATURE_ERRORS_OUTPUT}"
            initializers.append(_const(f"{prefix}share_weight", np.array(weight / share_total, dtype=np.float32)))
            nodes += [
                helper.make_node("ReduceSum", [errors, "ens_axis1"], [f"{prefix}row_error"], keepdims=1),
                helper.make_node("Max", [f"{prefix}row_error", "ens_eps"], [f"{prefix}row_error_safe"]),
                helper.make_node("Div", [errors, f"{prefix}row_error_safe"], [f"{prefix}share"]),
                helper.make_node("Mul", [f"{prefix}share", f"{prefix}share_weight"], [f"{prefix}weighted_share"]),
            ]
            parts.append(f"{prefix}weighted_share")
        nodes.append(helper.make_node("Sum", parts, [bundle.FEATURE_ERRORS_OUTPUT]))
        outputs.append(
            helper.make_tensor_value_info(bundle.FEATURE_ERRORS_OUTPUT, TensorProto.FLOAT, ["N", dimension])
        )
    graph = helper.make_graph(
        nodes,
        "oddity_ensemble",
        [helper.make_tensor_value_info(bundle.INPUT_NAME, TensorProto.FLOAT, ["N", dimension])],
        outputs,
        initializers,
    )
    return contract_model(graph, opsets).SerializeToString()
