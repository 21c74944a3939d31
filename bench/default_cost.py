"""What the default kind (auto) costs to train, next to a plain kNN on the same rows.

    python -m bench.default_cost [--rows 50000] [--repeats 3]

Two shapes a user drops in: a table (rows x 20 correlated features) and an encoder's vectors
(rows/2 x 512). For each, the trainer's own code path in-process: `fit_cross_fitted` (the
served model and every row's out-of-fold score), the ONNX export, and scoring 4,096 rows
through ONNX Runtime. Baseline: the kNN kind (what auto trains on tables, without the
trimming refit and the ensemble wrapper) on the same rows, in the same run. Printed: medians
over repeats and the ratio auto / kNN; the row bound (`training.max_rows`, 50,000) is what
keeps either bounded on large data.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.machine import describe
from oddity.trainer import calibration
from oddity.trainer.learners import make_anomaly_learner
from oddity.trainer.validation import onnx_scores, onnx_session

SCORED_ROWS = 4096


def table(rows: int, rng: np.random.Generator) -> np.ndarray:
    return rng.normal(size=(rows, 20)) @ rng.normal(size=(20, 20))


def vectors(rows: int, rng: np.random.Generator) -> np.ndarray:
    """Non-negative, sparse-ish, near-constant norm: what an image encoder's pooled output looks like."""
    x = np.maximum(rng.normal(size=(rows, 512)) @ rng.normal(size=(512, 512)) * 0.05, 0.0)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe())
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
