"""Turning raw scores into decisions: normalized scores, thresholds, confidence and
feature contributions. Pure numpy, shared by every model kind."""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def normalize(scores: np.ndarray, probabilities: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Empirical CDF of each score among held-out normal scores, in [0, 1].

    0.97 means "more unusual than 97% of normal samples". Monotone in the score: a higher
    score never gets a lower normalized score.
    """
    return np.interp(scores, values, probabilities, left=0.0, right=1.0)


def threshold_at(percentile: float, probabilities: np.ndarray, values: np.ndarray) -> float:
    """The score at a percentile (0-100) of held-out normal scores."""
    return float(np.interp(percentile / 100.0, probabilities, values))


def confidence(normalized: np.ndarray, normalized_threshold: np.ndarray | float, is_anomaly: np.ndarray) -> np.ndarray:
    """Distance from the decision boundary in percentile space, in [0, 1].

    With q the normalized score and t the normalized threshold: anomalies get
    (q - t) / (1 - t), normal rows (t - q) / t. 0 means on the boundary, 1 means as far
    from it as the held-out distribution allows.
    """
    # Keeping t off 0 and 1 avoids dividing by zero; the limits (1 at the far ends) still hold.
    # (np.minimum/np.maximum: np.clip's dispatch costs more than the arithmetic on small arrays.)
    if isinstance(normalized_threshold, float):
        t = min(max(normalized_threshold, _EPS), 1.0 - _EPS)
    else:
        t = np.minimum(np.maximum(normalized_threshold, _EPS), 1.0 - _EPS)
    distance = np.where(is_anomaly, (normalized - t) / (1.0 - t), (t - normalized) / t)
    return np.minimum(np.maximum(distance, 0.0), 1.0)


def top_contributions(feature_errors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the k features with the largest errors, largest first.

    Returns (indices [N, k], errors [N, k], shares [N, k]) where share = the feature's part of
    the row's total error.
    """
    n, d = feature_errors.shape
    k = min(k, d)
    # argpartition finds the k largest without a full sort; with k == d every column is taken.
    top = np.argpartition(-feature_errors, k - 1, axis=1)[:, :k] if k < d else np.broadcast_to(np.arange(d), (n, d))
    top_errors = np.take_along_axis(feature_errors, top, axis=1)
    order = np.argsort(-top_errors, axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    top_errors = np.take_along_axis(top_errors, order, axis=1)
    totals = feature_errors.sum(axis=1, keepdims=True)
    shares = np.divide(top_errors, totals, out=np.zeros_like(top_errors, dtype=np.float64), where=totals > 0)
    return top, top_errors, shares
