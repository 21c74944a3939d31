"""Isolation forests written as ONNX graphs straight from the fitted trees' arrays.

skl2onnx writes an isolation forest as about 40 nodes per tree (each tree's leaf index, then
gathers of its depths and path lengths), and its graph builder checks every new node against
every node so far: converting 100 trees took ~10 s, 200 trees ~30 s, and ONNX Runtime took
0.7-1.4 s to load the result. Here the whole forest is one TreeEnsembleRegressor whose leaves
hold what scikit-learn adds up per tree (the leaf's depth + the average path length of the
rows left in it - 1), followed by the score formula: milliseconds to build and to load.

Splits match scikit-learn's exactly: it compares float32 inputs with float64 thresholds, and
`x <= t` for a float32 x holds exactly when x <= t rounded down to float32. Everything is read
from the fitted forest's public attributes (estimators_, estimators_features_, max_samples_,
offset_ and each tree's tree_ arrays); what scikit-learn keeps privately (node depths, the
average path length of a leaf's rows) is computed here by its published formulas.

Reason to change: how fitted trees are written as ONNX graphs.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from oddity.common import bundle
from oddity.trainer.onnx_graphs import contract_model

_LEAF = -1  # scikit-learn's children_left/right of a leaf


def thresholds_for_float32(thresholds: np.ndarray) -> np.ndarray:
    """float64 thresholds rounded down to float32, so float32 `x <= t` splits as scikit-learn's does."""
    t64 = np.asarray(thresholds, dtype=np.float64)
    t32 = t64.astype(np.float32)
    above = t32.astype(np.float64) > t64
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def average_path_length(rows: np.ndarray) -> np.ndarray:
    """The average path length of an unsuccessful search in a binary search tree of `rows`
    rows (Liu et al., Isolation Forest, eq. 1): what a leaf still holding rows adds to a depth."""
    n = np.asarray(rows, dtype=np.float64)
    longer = np.maximum(n, 3.0)  # the formula's branch only; n <= 2 is taken below
    lengths = 2.0 * (np.log(longer - 1.0) + np.euler_gamma) - 2.0 * (longer - 1.0) / longer
    return np.where(n <= 1, 0.0, np.where(n == 2, 1.0, lengths))


def node_depths(children_left: np.ndarray, children_right: np.ndarray) -> np.ndarray:
    """Each node's depth, the root's 1 (children are numbered after their parent)."""
    depths = np.zeros(len(children_left), dtype=np.float64)
    depths[0] = 1.0
    for node, (left, right) in enumerate(zip(children_left, children_right, strict=True)):
        if left != _LEAF:
            depths[left] = depths[right] = depths[node] + 1.0
    return depths


def isolation_forest_graph(forest, d: int) -> onnx.ModelProto:
    """score = -decision_function(x) (higher = more anomalous) of a fitted IsolationForest."""
    # score_samples reads a column subset when each tree saw fewer than every feature.
    subsampled = any(len(columns) != forest.n_features_in_ for columns in forest.estimators_features_)
    tree_ids: list[np.ndarray] = []
    node_ids: list[np.ndarray] = []
    features: list[np.ndarray] = []
    values: list[np.ndarray] = []
    true_ids: list[np.ndarray] = []
    false_ids: list[np.ndarray] = []
    missing_true: list[np.ndarray] = []
    leaf_trees: list[np.ndarray] = []
    leaf_nodes: list[np.ndarray] = []
    leaf_values: list[np.ndarray] = []
    for i, (estimator, columns) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
        tree = estimator.tree_
        count = tree.node_count
        leaf = tree.children_left == _LEAF
        feature = np.where(leaf, 0, tree.feature)
        tree_ids.append(np.full(count, i, dtype=np.int64))
        node_ids.append(np.arange(count, dtype=np.int64))
        features.append(np.asarray(columns)[feature] if subsampled else feature)
        values.append(np.where(leaf, 0.0, thresholds_for_float32(tree.threshold)).astype(np.float32))
        true_ids.append(np.where(leaf, 0, tree.children_left))
        false_ids.append(np.where(leaf, 0, tree.children_right))
        missing_true.append(np.asarray(getattr(tree, "missing_go_to_left", np.zeros(count)), dtype=np.int64))
        # What scikit-learn adds up for a row that ends in this leaf (IsolationForest._compute_score_samples).
        path = node_depths(tree.children_left, tree.children_right) + average_path_length(tree.n_node_samples) - 1.0
        leaf_trees.append(np.full(int(leaf.sum()), i, dtype=np.int64))
        leaf_nodes.append(np.flatnonzero(leaf))
        leaf_values.append(path[leaf])
    modes = np.where(np.concatenate([t.tree_.children_left for t in forest.estimators_]) == _LEAF, "LEAF", "BRANCH_LEQ")
    ensemble = helper.make_node(
        "TreeEnsembleRegressor",
        [bundle.INPUT_NAME],
        ["forest_depths"],
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function="SUM",
        post_transform="NONE",
        nodes_treeids=np.concatenate(tree_ids).tolist(),
        nodes_nodeids=np.concatenate(node_ids).tolist(),
        nodes_featureids=np.concatenate(features).astype(np.int64).tolist(),
        nodes_values=np.concatenate(values).tolist(),
        nodes_modes=modes.tolist(),
        nodes_truenodeids=np.concatenate(true_ids).astype(np.int64).tolist(),
        nodes_falsenodeids=np.concatenate(false_ids).astype(np.int64).tolist(),
        nodes_missing_value_tracks_true=np.concatenate(missing_true).tolist(),
        target_treeids=np.concatenate(leaf_trees).tolist(),
        target_nodeids=np.concatenate(leaf_nodes).astype(np.int64).tolist(),
        target_ids=[0] * sum(len(v) for v in leaf_values),
        target_weights=np.concatenate(leaf_values).astype(np.float32).tolist(),
    )
    # score_samples = -2^(-depths / denominator); Oddity's score = -(score_samples - offset_).
    denominator = len(forest.estimators_) * float(average_path_length(np.array([forest.max_samples_]))[0])
    factor, shift = (-math.log(2.0) / denominator, 0.0) if denominator else (0.0, -math.log(2.0))
    initializers = [
        numpy_helper.from_array(np.array(factor, dtype=np.float32), "forest_factor"),
        numpy_helper.from_array(np.array(shift, dtype=np.float32), "forest_shift"),
        numpy_helper.from_array(np.array(forest.offset_, dtype=np.float32), "forest_offset"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "forest_flat"),
    ]
    nodes = [
        ensemble,
        helper.make_node("Mul", ["forest_depths", "forest_factor"], ["forest_scaled"]),
        helper.make_node("Add", ["forest_scaled", "forest_shift"], ["forest_exponent"]),
        helper.make_node("Exp", ["forest_exponent"], ["forest_normality"]),  # 2^(-depths / denominator)
        helper.make_node("Add", ["forest_normality", "forest_offset"], ["forest_score"]),
        helper.make_node("Reshape", ["forest_score", "forest_flat"], [bundle.SCORE_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "oddity_isolation_forest",
        [helper.make_tensor_value_info(bundle.INPUT_NAME, TensorProto.FLOAT, ["N", d])],
        [helper.make_tensor_value_info(bundle.SCORE_OUTPUT, TensorProto.FLOAT, ["N"])],
        initializers,
    )
    return contract_model(graph, {"": bundle.OPSET, "ai.onnx.ml": bundle.ML_OPSET})
