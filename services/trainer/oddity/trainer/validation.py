"""The validation gate: what a model must prove before it is published.

ONNX Runtime must reproduce the framework model (for classifiers the calibrated probabilities
and any regression head's score); an anomaly model's cross-validated flag rate
(calibration.py) must be consistent with the configured bounds; a classifier's balanced
accuracy on its held-out rows (every classifier kind, scikit-learn and mlp_classifier alike),
and a detector's distance from the expected rate, must not fall behind the live version's on
the same rows by more than the tolerance.

Reason to change: what a model must prove before it is published.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from oddity.common import bundle


class ValidationFailed(Exception):
    """The model is sound enough to run but not good enough to publish; the message says why."""


# Rows per ONNX Runtime call when the trainer scores rows: a kNN graph holds a rows x reference
# matrix (1,024 x 20,000 floats: 80 MB), so the trainer's memory does not grow with the rows.
SCORING_ROWS = 1024


def onnx_session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Without the arena, what a call allocated goes back when the call ends; the arena would
    # keep the largest call's buffers for the trainer's lifetime.
    options.enable_cpu_mem_arena = False
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_scores(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    """Scores of the rows, SCORING_ROWS at a time."""
    parts = [
        session.run([bundle.SCORE_OUTPUT], {bundle.INPUT_NAME: rows[i : i + SCORING_ROWS].astype(np.float32)})[0]
        for i in range(0, len(rows), SCORING_ROWS)
    ]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def onnx_probabilities(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    return session.run([bundle.PROBABILITIES_OUTPUT], {bundle.INPUT_NAME: rows.astype(np.float32)})[0]


def check_parity(
    onnx_values: np.ndarray, framework_values: np.ndarray, tolerance: float, allowance: np.ndarray | None = None
) -> float:
    """Max abs difference between ONNX Runtime and the framework, judged relative to the values'
    scale and beyond `allowance` (per row: what float32 rounding of the inputs can explain, see
    AnomalyLearner.parity_allowance)."""
    if not onnx_values.size:
        return 0.0
    gaps = np.abs(onnx_values - framework_values)
    diff = float(np.max(gaps))
    scale = max(1.0, float(np.max(np.abs(framework_values))))
    excess = float(np.max(gaps - allowance)) if allowance is not None else diff
    if not np.isfinite(diff) or excess > tolerance * scale:
        explained = " beyond what float32 rounding explains" if allowance is not None else ""
        raise ValidationFailed(
            f"ONNX export differs from the trained model by {diff:.3g}{explained} (tolerance {tolerance:g})"
        )
    return diff


def check_anomaly_rate(
    rate: float, n: int, bounds: tuple[float, float], group: str, percentile: float, rate_with_ties: float = -1.0
) -> None:
    """The cross-validated rate on n rows must be consistent with [low, high]: its 99% Wilson
    interval has to overlap the bounds, so a few hundred rows judge tightly and forty loosely.
    When rows tie at the threshold (`rate_with_ties` counts them flagged) and the bounds lie
    between the two rates, no threshold could do better: that passes. A refusal says what to
    change."""
    low, high = bounds
    if rate < low <= rate_with_ties:
        return
    z = 2.576
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    if centre - half > high or centre + half < low:
        hint = (
            "the rows disagree with each other more than one threshold can cover: add more normal rows, "
            f"raise threshold_percentile (now {percentile:g}), or widen validation.anomaly_rate"
            if rate > high
            else f"lower threshold_percentile (now {percentile:g}) or widen validation.anomaly_rate"
        )
        raise ValidationFailed(
            f"group {group!r}: {rate:.1%} of {n} normal rows are flagged when each is judged by a threshold "
            f"taken on the others, outside validation.anomaly_rate [{low:.0%}, {high:.0%}]; {hint}"
        )


def check_regression(new: float, live: float, tolerance: float, what: str, higher_is_better: bool) -> None:
    worse = live - new if higher_is_better else new - live
    if worse > tolerance:
        raise ValidationFailed(f"{what} is {new:.3f} against {live:.3f} for the live version (tolerance {tolerance})")


def check_balanced_accuracy(new: float, live: float, tolerance: float, group: str, rows: int) -> None:
    """A classifier whose balanced accuracy on the held-out rows falls more than `tolerance`
    below the live version's on the same rows is not published; the refusal says what to do."""
    if live - new > tolerance:
        raise ValidationFailed(
            f"group {group!r}: balanced accuracy {new:.3f} on {rows} held-out rows is below the live version's "
            f"{live:.3f} on the same rows by more than validation.regression_tolerance {tolerance:g}; the live "
            "version keeps serving. Check the new labels and data, or raise the tolerance (or Rollback and Train) "
            "to accept a lower figure"
        )
