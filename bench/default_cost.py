"""What the default kind (auto) costs to train, next to a plain kNN on the same rows.

    python -m bench.default_cost [--rows 50000] [--repeats 3]

Two shapes a user drops in: a table (rows x 20 correlated features) and an encoder's vectors
(rows/2 x 512). For each, the trainer's own code path in-process: `fit_cross_fitted` (the
served model and every row's out-of-fold score), the ONNX export, and scoring 4,096 rows
through ONNX Runtime. Baseline: the kNN kind (what auto trains on tables, without the
trimming refit and the ensemble wrapper) on the same rows, in the same run. Printed: medians
over repeats and the ratio auto / kNN; the row bound (`training.max_rows`, 50,000) is what
keeps either bounded on large data.

Then what the default's kNN graphs cost to serve, at the reference sizes the cap gives
(975 x 769 cosine on embeddings, 15,000 x 50 and 20,000 x 12 euclidean on tables): rows/s
at batch 1, 256 and 4,096 in sessions built as the detector builds them (one intra-op
thread), next to the graph's own ranking product alone (one MatMul of the same shape) in
the same run: how near MatMul speed the whole graph runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bench.machine import describe
from oddity.common.scoring.sessions import SessionConfig
from oddity.trainer import calibration
from oddity.trainer.learners import make_anomaly_learner
from oddity.trainer.learners.knn import ranking_matrix
from oddity.trainer.onnx_graphs import contract_model
from oddity.trainer.validation import onnx_scores, onnx_session

SCORED_ROWS = 4096
SERVED_BATCHES = (1, 256, 4096)
# (metric, reference rows, features): the capped references of the default's kNN members.
SERVED_SHAPES = (("cosine", 975, 769), ("euclidean", 15_000, 50), ("euclidean", 20_000, 12))


def table(rows: int, rng: np.random.Generator, d: int = 20) -> np.ndarray:
    return rng.normal(size=(rows, d)) @ rng.normal(size=(d, d))


def vectors(rows: int, rng: np.random.Generator, d: int = 512) -> np.ndarray:
    """Non-negative, sparse-ish, near-constant norm: what an image encoder's pooled output looks like."""
    x = np.maximum(rng.normal(size=(rows, d)) @ rng.normal(size=(d, d)) * 0.05, 0.0)
    return x / np.linalg.norm(x, axis=1, keepdims=True) * 20


def measure(kind: str, params: dict, x: np.ndarray) -> dict[str, float]:
    started = time.perf_counter()
    learner = make_anomaly_learner(kind, params)
    learner.fit_cross_fitted(x, calibration.make_folds(len(x), 0))
    fitted = time.perf_counter()
    session = onnx_session(learner.to_onnx())
    exported = time.perf_counter()
    onnx_scores(session, x[:SCORED_ROWS])
    scored = time.perf_counter()
    return {"fit": fitted - started, "export": exported - fitted, "score": scored - exported}


def rows_per_second(model: bytes, rows: np.ndarray, seconds: float) -> float:
    """Best of short timed runs: robust to other processes taking the core for a while."""
    session = ort.InferenceSession(model, SessionConfig().options(), providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    session.run([output], {"input": rows})
    best, spent = float("inf"), 0.0
    while spent < seconds:
        started = time.perf_counter()
        session.run([output], {"input": rows})
        took = time.perf_counter() - started
        best, spent = min(best, took), spent + took
    return len(rows) / best


def ranking_product(ranking: np.ndarray) -> bytes:
    """The kNN graph's ranking MatMul alone, as a model: the baseline of the whole graph."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "ranking"], ["rank"])],
        "ranking_product",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", ranking.shape[0]])],
        [helper.make_tensor_value_info("rank", TensorProto.FLOAT, ["N", ranking.shape[1]])],
        [numpy_helper.from_array(ranking, "ranking")],
    )
    return contract_model(graph).SerializeToString()


def serving(seconds: float) -> None:
    print("\nkNN graphs served (1 intra-op thread): rows/s, and as a share of their ranking MatMul alone")
    rng = np.random.default_rng(1)
    for metric, reference, d in SERVED_SHAPES:
        x = vectors(reference, rng, d) if metric == "cosine" else table(reference, rng, d)
        learner = make_anomaly_learner("knn", {"metric": metric, "max_reference": reference}).fit(x)
        graph = learner.to_onnx()
        product = ranking_product(ranking_matrix(learner._graph_reference(), learner.k_)[0])
        queries = np.vstack([x] * (-(-max(SERVED_BATCHES) // len(x))))[: max(SERVED_BATCHES)].astype(np.float32)
        cells = []
        for batch in SERVED_BATCHES:
            whole = rows_per_second(graph, queries[:batch], seconds)
            alone = rows_per_second(product, np.hstack([queries[:batch], np.ones((batch, 1), np.float32)]), seconds)
            gflops = whole * 2 * reference * (d + 1) / 1e9
            cells.append(f"batch {batch}: {whole:>9,.0f} ({whole / alone:.0%}, {gflops:.0f} GFLOP/s)")
        print(f"  {metric} {reference:,} x {d}: " + "  ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serving-seconds", type=float, default=1.0, help="per graph and batch")
    parser.add_argument("--serving-only", action="store_true", help="only the kNN graphs' serving figures")
    args = parser.parse_args()
    print(describe())
    serving(args.serving_seconds)
    if args.serving_only:
        return
    rng = np.random.default_rng(0)
    shapes = {"table": table(args.rows, rng), "vectors": vectors(args.rows // 2, rng)}
    for name, x in shapes.items():
        print(f"\n{name}: {x.shape[0]:,} x {x.shape[1]}")
        results: dict[str, list[dict[str, float]]] = {"auto": [], "knn": []}
        for _ in range(args.repeats):  # interleaved, so drift in the machine's speed hits both
            results["knn"].append(measure("knn", {}, x))
            results["auto"].append(measure("auto", {}, x))
        medians = {k: {p: statistics.median(r[p] for r in runs) for p in runs[0]} for k, runs in results.items()}
        for kind, figures in medians.items():
            print(f"  {kind:<5} " + ", ".join(f"{phase} {seconds:.2f} s" for phase, seconds in figures.items()))
        ratio = {p: medians["auto"][p] / medians["knn"][p] for p in medians["auto"]}
        print("  auto / knn: " + ", ".join(f"{phase} {value:.2f}x" for phase, value in ratio.items()))


if __name__ == "__main__":
    main()
