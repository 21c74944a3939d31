"""Classifier quality: the mlp_classifier kind next to logistic regression on the same splits.

    python -m bench.classifier_quality [--sets CIFAR,20news] [--seeds 3] [--data PATH]

Data: the embedding sets of the anomaly-benchmarks folder (`embeddings/*.npz`, see its README:
ResNet-18 image features, BERT text features) used as labelled data, label = y (about 5% of
the rows are the rare class: an imbalance of roughly 19:1).

Protocol, per set and seed: one stratified split, 70% to train and 30% to test; every method
is fitted on the same training rows by the trainer's own learners (standardization inside each
model, the MLP's early stopping and temperature on a split of the training rows) and scored on
the same test rows by ONNX Runtime on the exported graph, as the detector would serve it.

Methods: `mlp_classifier` with its defaults (class weights by inverse frequency), the same with
balanced batch sampling instead, logistic regression as the trainer's `logistic` kind has it
(unweighted) and logistic regression with `class_weight: balanced`.

Reported per set (mean and spread over seeds) and over sets: balanced accuracy (the figure the
validation gate compares), macro F1 and, for the MLP, the expected calibration error of the
served probabilities on the test rows before and after temperature scaling; fit seconds. JSON
in bench/results/classifier_quality.json (--output).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from bench.machine import describe
from oddity.trainer.classifier_evaluation import expected_calibration_error
from oddity.trainer.learners import make_learner
from oddity.trainer.learners.mlp import MlpClassifierLearner
from oddity.trainer.validation import onnx_probabilities, onnx_session

# The development sets sit beside the repository: ../shared/data/anomaly-benchmarks.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "anomaly-benchmarks"
DEFAULT_OUTPUT = Path("bench/results/classifier_quality.json")
TEST_SHARE = 0.3

METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp_classifier": ("mlp_classifier", {}),
    "mlp (balanced sampler)": ("mlp_classifier", {"class_weight": "none", "sampler": "balanced"}),
    "logistic": ("logistic", {}),
    "logistic (balanced)": ("logistic", {"class_weight": "balanced"}),
}


@dataclass
class Result:
    set: str
    seed: int
    method: str
    balanced_accuracy: float
    macro_f1: float
    fit_seconds: float
    ece_before_temperature: float | None = None
    ece_after_temperature: float | None = None
    temperature: float | None = None
    epochs: int | None = None


def load_sets(root: Path, only: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    wanted = [s for s in only.split(",") if s]
    sets = {}
    for path in sorted((root / "embeddings").glob("*.npz")):
        if wanted and not any(w.lower() in path.stem.lower() for w in wanted):
            continue
        with np.load(path, allow_pickle=False) as data:
            x, y = data["X"].astype(np.float32), data["y"].astype(int)
        sets[path.stem] = (x, np.where(y == 1, "rare", "common"))
    if not sets:
        raise SystemExit(f"no embedding sets under {root / 'embeddings'} (--data names the anomaly-benchmarks folder)")
    return sets


def run_one(name: str, seed: int, method: str, x_train, y_train, x_test, y_test) -> Result:
    kind, params = METHODS[method]
    started = time.perf_counter()
    learner = make_learner(kind, {**params, "seed": seed} if kind == "mlp_classifier" else params)
    learner.fit(x_train, y_train)
    seconds = time.perf_counter() - started
    served = onnx_probabilities(onnx_session(learner.to_onnx()), x_test)  # as the detector serves it
    classes = learner.classes_  # type: ignore[attr-defined]
    predicted = classes[served.argmax(axis=1)]
    result = Result(
        set=name,
        seed=seed,
        method=method,
        balanced_accuracy=float(balanced_accuracy_score(y_test, predicted)),
        macro_f1=float(f1_score(y_test, predicted, average="macro")),
        fit_seconds=seconds,
    )
    if isinstance(learner, MlpClassifierLearner):
        truth = np.searchsorted(classes, y_test)
        raw = learner.predict_proba(x_test, calibrated=False)
        result.ece_before_temperature = expected_calibration_error(raw, truth)
        result.ece_after_temperature = expected_calibration_error(served, truth)
        result.temperature = learner.temperature_
        result.epochs = learner.epochs_run_
    return result


def mean_sd(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def print_table(results: list[Result], sets: list[str]) -> None:
    methods = list(METHODS)
    width = max(len(m) for m in methods) + 2
    print("\nbalanced accuracy on the test rows (mean ± sd over seeds)")
    print(f"{'method':<{width}}" + "".join(f"{s:>24}" for s in sets) + f"{'mean over sets':>17}")
    for method in methods:
        cells, means = [], []
        for name in sets:
            values = [r.balanced_accuracy for r in results if r.method == method and r.set == name]
            cells.append(f"{mean_sd(values):>24}")
            means.append(float(np.mean(values)))
        print(f"{method:<{width}}" + "".join(cells) + f"{np.mean(means):>17.3f}")
    print("\nmacro F1 (mean over seeds)")
    for method in methods:
        cells = [
            f"{np.mean([r.macro_f1 for r in results if r.method == method and r.set == name]):>24.3f}" for name in sets
        ]
        print(f"{method:<{width}}" + "".join(cells))
    print("\nmlp_classifier: ECE of the test probabilities before -> after temperature scaling (T), epochs, fit s")
    for name in sets:
        mine = [r for r in results if r.method == "mlp_classifier" and r.set == name]
        before = np.mean([r.ece_before_temperature for r in mine])
        after = np.mean([r.ece_after_temperature for r in mine])
        temperature = np.mean([r.temperature for r in mine])
        epochs = np.mean([r.epochs for r in mine])
        seconds = np.mean([r.fit_seconds for r in mine])
        print(f"  {name:<22} {before:.4f} -> {after:.4f} (T {temperature:.2f}), {epochs:.0f} epochs, {seconds:.1f} s")
    fits = {m: np.mean([r.fit_seconds for r in results if r.method == m]) for m in methods}
    print("\nmean fit seconds: " + ", ".join(f"{m} {s:.1f}" for m, s in fits.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="", help="comma-separated name substrings, e.g. CIFAR,20news")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the anomaly-benchmarks folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    print(describe(), flush=True)
    started = time.perf_counter()
    sets = load_sets(args.data, args.sets)
    results: list[Result] = []
    for name, (x, y) in sets.items():
        print(f"{name}: {len(x)} rows x {x.shape[1]}, rare class {np.mean(y == 'rare'):.1%}", flush=True)
        for seed in range(args.seeds):
            x_train, x_test, y_train, y_test = train_test_split(
                x, y, test_size=TEST_SHARE, stratify=y, random_state=seed
            )
            for method in METHODS:
                result = run_one(name, seed, method, x_train, y_train, x_test, y_test)
                results.append(result)
                print(
                    f"  seed {seed} {method:<24} balanced accuracy {result.balanced_accuracy:.3f}, "
                    f"macro F1 {result.macro_f1:.3f} ({result.fit_seconds:.1f} s)",
                    flush=True,
                )
    print_table(results, list(sets))
    print(f"\n{len(results)} fits in {time.perf_counter() - started:.0f} s")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"results": [asdict(r) for r in results]}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
