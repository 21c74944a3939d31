"""The knn kind: an item is as unusual as it is far from its k nearest normal rows.

The score is the mean distance to the k nearest rows of a stored reference set (`aggregate:
kth`: the distance to the k-th nearest). The reference rows are the training rows,
standardized; or L2-normalized for `metric: cosine`, which suits embeddings; or whitened by the
shrinkage covariance for `metric: whitened` (gaussian.whitening: distances that discount
correlated features, a local Mahalanobis distance). The ONNX
graph is brute force over the reference matrix: standardization, one matrix product to find
the k nearest ([z, 1] @ [-2 r; |r|^2], the reference stored pre-transposed with |r|^2 as one
more row, so nothing but the product touches the rows x reference matrix; on references of
4,096 rows or more, they are found group by group), then their distances computed exactly
from the differences (the product's float32 cancellation blurs near-duplicates: it can rank
them, not measure them), mean. Spare candidates beyond k bought nothing: the product misranks
only rows whose distances differ by less than its rounding, and their exact distances differ
as little; without them the exact pass costs k / (k + 8) of what it did. Per-feature
errors for explanations are the squared differences to the nearest reference row. Measured
in-process on one thread, the product, then the TopK over every column, made the cost on
tables; on embeddings the two products (with the Mahalanobis member's) are half of it and the
exact pass over the k nearest's differences a fifth.

Serving cost grows with reference rows x dimensions, so the reference is capped: at most
`max_reference` rows (default: about 750,000 values, e.g. 975 rows of a 769-d embedding,
15,000 rows of 50 features; 20,000 at most), a seeded random subsample of the training rows when
there are more. Out-of-fold scores are exact leave-one-out: each training row's distance to
its k nearest *other* reference rows, the distribution new normal rows will see.

Reason to change: how nearest-neighbour distances are computed, capped and exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from oddity.common import bundle
from oddity.trainer import job_control
from oddity.trainer.learners.base import AnomalyLearner, Progress
from oddity.trainer.learners.gaussian import standardization, whitening
from oddity.trainer.learners.registry import register_learner
from oddity.trainer.onnx_graphs import contract_model

REFERENCE_VALUES = 750_000  # rows x dimensions of the default reference cap
MAX_REFERENCE_ROWS = 20_000
MIN_REFERENCE_ROWS = 500
# Rows per distance block: bounds memory at BLOCK_ROWS x reference floats, a few float64 copies of
# 256 x 15,000 (30 MB each) at once where 1,024 rows took half a GB at peak, and the time a
# stop or a spent time budget waits (job_control.check() runs between blocks).
BLOCK_ROWS = 256
METRICS = ("euclidean", "cosine", "whitened")
AGGREGATES = ("mean", "kth")
# References of at least this many rows find their candidates group by group (_grouped_candidates).
GROUPED_MIN_REFERENCE = 4096
GROUP_ROWS = 32
FAR = 1e30  # |r|^2 of the columns that pad a grouped reference: never a candidate
_EPS = 1e-12


def default_reference_cap(d: int) -> int:
    return int(min(MAX_REFERENCE_ROWS, max(MIN_REFERENCE_ROWS, REFERENCE_VALUES // max(d, 1))))


@register_learner
class KnnLearner(AnomalyLearner):
    kind = "knn"
    explains = True
    calibration_method = "leave_one_out"  # out_of_fold_scores: exact leave-one-out
    PARAMS = {"k", "metric", "aggregate", "max_reference"}
    whitening_: np.ndarray | None  # metric whitened: standardized rows @ this matrix

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.k = int(params.get("k", 5))
        self.metric = str(params.get("metric", "euclidean"))
        self.aggregate = str(params.get("aggregate", "mean"))
        self.max_reference = params.get("max_reference")

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        k = int(params.get("k", 5))
        metric = str(params.get("metric", "euclidean"))
        if k < 1:
            raise ValueError(f"knn: k must be >= 1, got {k}")
        if metric not in METRICS:
            raise ValueError(f"knn: metric must be one of {list(METRICS)}, got {metric!r}")
        aggregate = str(params.get("aggregate", "mean"))
        if aggregate not in AGGREGATES:
            raise ValueError(f"knn: aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")

    # -- the transform the graph repeats ---------------------------------------------------

    def _transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.metric == "cosine":
            return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
        z = (x - self.mean_) / self.scale_
        return z @ self.whitening_ if self.whitening_ is not None else z

    # -- fitting ---------------------------------------------------------------------------

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> KnnLearner:
        n, d = x.shape
        if n < 2:
            raise ValueError("knn needs at least 2 rows")
        if self.metric == "whitened":
            fitted = whitening(x, self.seed)
            self.mean_, self.scale_, self.whitening_ = fitted.mean, fitted.scale, fitted.matrix
        else:
            self.mean_, self.scale_ = standardization(x)
            self.whitening_ = None
        cap = int(self.max_reference or default_reference_cap(d))
        rows = np.arange(n)
        if n > cap:
            rows = np.sort(np.random.default_rng(self.seed).choice(n, cap, replace=False))
        self.reference_rows_ = rows
        self.reference_source_ = np.asarray(x[rows], dtype=np.float32)  # as served: float32
        self.reference_ = self._transform(x[rows])
        self.k_ = min(self.k, len(rows) - 1)
        if progress is not None:
            progress(1, 1, 0.0)
        return self

    def _nearest(self, z: np.ndarray, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the distances to the k nearest reference rows (nearest first, computed from
        the differences) and the squared differences to the nearest. `exclude[i]` is a
        reference index row i may not use (itself), or -1."""
        reference = self.reference_
        reference_sq = np.einsum("ij,ij->i", reference, reference)
        k = self.k_
        distances = np.empty((len(z), k))
        errors = np.empty(z.shape)
        for start in range(0, len(z), BLOCK_ROWS):
            job_control.check()
            block = z[start : start + BLOCK_ROWS]
            d2 = np.einsum("ij,ij->i", block, block)[:, None] + reference_sq[None, :] - 2.0 * block @ reference.T
            if exclude is not None:
                own = exclude[start : start + BLOCK_ROWS]
                mine = own >= 0
                d2[np.flatnonzero(mine), own[mine]] = np.inf
            candidates = np.argpartition(d2, k - 1, axis=1)[:, :k]
            squares = (block[:, None, :] - reference[candidates]) ** 2  # [rows, k, D]
            exact = squares.sum(axis=2)
            if exclude is not None:  # a row's own copy stays excluded among the candidates
                exact[candidates == exclude[start : start + BLOCK_ROWS, None]] = np.inf
            order = np.argsort(exact, axis=1, kind="stable")[:, :k]
            distances[start : start + len(block)] = np.sqrt(np.take_along_axis(exact, order, axis=1))
            errors[start : start + len(block)] = squares[np.arange(len(block)), order[:, 0]]
        return distances, errors

    def _aggregated(self, distances: np.ndarray) -> np.ndarray:
        return distances[:, -1] if self.aggregate == "kth" else distances.mean(axis=1)

    def anomaly_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        distances, errors = self._nearest(self._transform(x))
        return self._aggregated(distances), errors.astype(np.float32)

    def out_of_fold_scores(self, x: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """Leave-one-out, exactly (the folds are not needed): a reference row is scored against
        the other reference rows; rows left out of the reference are held out already."""
        exclude = np.full(len(x), -1, dtype=np.int64)
        exclude[self.reference_rows_] = np.arange(len(self.reference_rows_))
        distances, _ = self._nearest(self._transform(x), exclude)
        return self._aggregated(distances)

    # -- export ----------------------------------------------------------------------------

    def _graph_reference(self) -> np.ndarray:
        """The reference rows as the graph stores them. Standardized ones are computed with the
        graph's own float32 operations, so a row identical to a reference row is at distance
        exactly 0 in the graph as in the learner: duplicates decide ties in real data."""
        if self.metric != "euclidean":
            return self.reference_.astype(np.float32)
        return (self.reference_source_ - self.mean_.astype(np.float32)) / self.scale_.astype(np.float32)

    def to_onnx(self) -> bytes:
        d = self.reference_.shape[1]
        reference = self._graph_reference()
        ranking, groups = ranking_matrix(reference, self.k_)
        initializers = [
            numpy_helper.from_array(reference, "knn_reference"),
            numpy_helper.from_array(ranking, "knn_ranking"),
            numpy_helper.from_array(np.array([0, 0, 0, 1], dtype=np.int64), "knn_pad_one"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "knn_one"),
            numpy_helper.from_array(np.array([self.k_], dtype=np.int64), "knn_k"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "knn_axis1"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "knn_first"),
        ]
        if self.metric == "cosine":
            initializers.append(numpy_helper.from_array(np.array(_EPS, dtype=np.float32), "knn_eps"))
            nodes = [
                helper.make_node("ReduceL2", [bundle.INPUT_NAME], ["knn_norm"], axes=[1], keepdims=1),
                helper.make_node("Max", ["knn_norm", "knn_eps"], ["knn_norm_safe"]),
                helper.make_node("Div", [bundle.INPUT_NAME, "knn_norm_safe"], ["knn_z"]),
            ]
        elif self.whitening_ is not None:  # metric: whitened
            # The standardization's division folds into the whitening matrix.
            initializers += [
                numpy_helper.from_array(self.mean_.astype(np.float32), "knn_mean"),
                numpy_helper.from_array((self.whitening_ / self.scale_[:, None]).astype(np.float32), "knn_whiten"),
            ]
            nodes = [
                helper.make_node("Sub", [bundle.INPUT_NAME, "knn_mean"], ["knn_centred"]),
                helper.make_node("MatMul", ["knn_centred", "knn_whiten"], ["knn_z"]),
            ]
        else:
            initializers += [
                numpy_helper.from_array(self.mean_.astype(np.float32), "knn_mean"),
                numpy_helper.from_array(self.scale_.astype(np.float32), "knn_scale"),
            ]
            nodes = [
                helper.make_node("Sub", [bundle.INPUT_NAME, "knn_mean"], ["knn_centred"]),
                helper.make_node("Div", ["knn_centred", "knn_scale"], ["knn_z"]),
            ]
        nodes += [
            # Which rows may be nearest: [z, 1] @ [-2 r; |r|^2] ranks them as |z - r|^2 does
            # (|z|^2 is the same for every reference row), in one matrix product and nothing else.
            helper.make_node("Pad", ["knn_z", "knn_pad_one", "knn_one"], ["knn_z_one"], mode="constant"),
            helper.make_node("MatMul", ["knn_z_one", "knn_ranking"], ["knn_rank"]),
        ]
        if groups:
            candidate_nodes, candidate_initializers = _grouped_candidates(groups, ranking.shape[1], self.k_)
            nodes += candidate_nodes
            initializers += candidate_initializers
        else:
            nodes.append(
                helper.make_node(
                    "TopK", ["knn_rank", "knn_k"], ["knn_rank_top", "knn_candidate_index"], axis=1, largest=0
                )
            )
        nodes += [
            # How far they are: from the differences, exactly; then the k nearest of them.
            helper.make_node("Gather", ["knn_reference", "knn_candidate_index"], ["knn_neighbours"], axis=0),
            helper.make_node("Unsqueeze", ["knn_z", "knn_axis1"], ["knn_z3"]),
            helper.make_node("Sub", ["knn_z3", "knn_neighbours"], ["knn_diff"]),
            helper.make_node("ReduceSumSquare", ["knn_diff"], ["knn_exact_d2"], axes=[2], keepdims=0),
            helper.make_node("TopK", ["knn_exact_d2", "knn_k"], ["knn_top_d2", "knn_top_slot"], axis=1, largest=0),
            helper.make_node("Sqrt", ["knn_top_d2"], ["knn_distance"]),
            # TopK sorts nearest first: the k-th distance is the largest of the k.
            helper.make_node(
                "ReduceMax" if self.aggregate == "kth" else "ReduceMean",
                ["knn_distance"],
                [bundle.SCORE_OUTPUT],
                axes=[1],
                keepdims=0,
            ),
            # Explanations: squared differences to the nearest reference row, gathered again
            # (one row of D, not the candidates' differences kept for it).
            helper.make_node("Gather", ["knn_top_slot", "knn_first"], ["knn_nearest_slot"], axis=1),
            helper.make_node("GatherElements", ["knn_candidate_index", "knn_nearest_slot"], ["knn_nearest"], axis=1),
            helper.make_node("Gather", ["knn_reference", "knn_nearest"], ["knn_nearest_row"], axis=0),
            helper.make_node("Sub", ["knn_z3", "knn_nearest_row"], ["knn_nearest_diff"]),
            helper.make_node("Mul", ["knn_nearest_diff", "knn_nearest_diff"], ["knn_nearest_sq"]),
            helper.make_node("Squeeze", ["knn_nearest_sq", "knn_axis1"], [bundle.FEATURE_ERRORS_OUTPUT]),
        ]
        graph = helper.make_graph(
            nodes,
            "oddity_knn",
            [helper.make_tensor_value_info(bundle.INPUT_NAME, TensorProto.FLOAT, ["N", d])],
            [
                helper.make_tensor_value_info(bundle.SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
                helper.make_tensor_value_info(bundle.FEATURE_ERRORS_OUTPUT, TensorProto.FLOAT, ["N", d]),
            ],
            initializers,
        )
        return contract_model(graph).SerializeToString()


def ranking_matrix(reference: np.ndarray, candidates: int) -> tuple[np.ndarray, int]:
    """[D + 1, R'] for the ranking product: -2 r^T over |r|^2, stored [D, R] so MatMul reads it
    as it multiplies; and the rows per group of the candidate search (0: none). A grouped
    reference is padded to whole groups with columns no row can rank near (|r|^2 = FAR)."""
    r64 = reference.astype(np.float64)
    columns = np.vstack([-2.0 * r64.T, np.einsum("ij,ij->i", r64, r64)[None, :]])
    groups = GROUP_ROWS if len(reference) >= GROUPED_MIN_REFERENCE and len(reference) >= 2 * candidates else 0
    if groups:
        padding = -len(reference) % groups
        far = np.zeros((columns.shape[0], padding))
        far[-1] = FAR
        columns = np.hstack([columns, far])
    return columns.astype(np.float32), groups


def _grouped_candidates(group_rows: int, columns: int, candidates: int):
    """Nodes finding the `candidates` lowest of `knn_rank` [N, columns] without a TopK over
    all columns (its per-element cost dominated large references): the lowest values lie in
    the `candidates` groups of `group_rows` columns with the lowest minima, so a TopK over the
    group minima and one over those groups' columns find them."""
    groups = columns // group_rows
    initializers = [
        numpy_helper.from_array(np.array([0, groups, group_rows], dtype=np.int64), "knn_group_shape"),
        numpy_helper.from_array(np.array([0, candidates * group_rows], dtype=np.int64), "knn_chosen_shape"),
        numpy_helper.from_array(np.array([min(candidates, groups)], dtype=np.int64), "knn_groups_kept"),
        numpy_helper.from_array(np.array(group_rows, dtype=np.int64), "knn_group_rows"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "knn_axis2"),
    ]
    n = helper.make_node
    nodes = [
        n("Reshape", ["knn_rank", "knn_group_shape"], ["knn_rank_groups"]),
        n("ReduceMin", ["knn_rank_groups"], ["knn_group_min"], axes=[2], keepdims=0),
        n("TopK", ["knn_group_min", "knn_groups_kept"], ["knn_group_top", "knn_group_index"], axis=1, largest=0),
        n("Unsqueeze", ["knn_group_index", "knn_axis2"], ["knn_group_index3"]),
        n("GatherND", ["knn_rank_groups", "knn_group_index3"], ["knn_chosen_groups"], batch_dims=1),
        n("Reshape", ["knn_chosen_groups", "knn_chosen_shape"], ["knn_chosen"]),
        n("TopK", ["knn_chosen", "knn_k"], ["knn_rank_top", "knn_chosen_slot"], axis=1, largest=0),
        # A chosen column's reference row: its group's first row plus its place in the group.
        n("Div", ["knn_chosen_slot", "knn_group_rows"], ["knn_chosen_group"]),
        n("Mod", ["knn_chosen_slot", "knn_group_rows"], ["knn_within_group"]),
        n("GatherElements", ["knn_group_index", "knn_chosen_group"], ["knn_candidate_group"], axis=1),
        n("Mul", ["knn_candidate_group", "knn_group_rows"], ["knn_group_start"]),
        n("Add", ["knn_group_start", "knn_within_group"], ["knn_candidate_index"]),
    ]
    return nodes, initializers
