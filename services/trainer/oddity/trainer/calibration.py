"""Calibration by cross-fitting: every training row gets a score from a model that did not see
it, and the threshold, the quantile table and the gate's anomaly rate all come from those
out-of-fold scores. So a dataset of 60 rows is calibrated on 60 scores, not on a split of six.

The served model is fitted on all rows; out-of-fold models saw (K-1)/K of them, so their
scores run slightly high and the served threshold errs on the side of flagging fewer normal
rows (K grows on small data, where the difference is largest).

Reason to change: how scores are calibrated and how the gate judges the anomaly rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from oddity.common import bundle
from oddity.trainer import job_control

# Levels at which each ensemble member's out-of-fold CDF is tabled.
MEMBER_LEVELS = np.linspace(0.0, 1.0, 201)
# Relative error a member's raw score may carry when its ONNX graph computes it in float32.
FLOAT32_SLACK = 1e-5
_EPS = 1e-12


def fold_count(n: int) -> int:
    """More folds on small data (each fold model sees more of it), fewer on large (cost)."""
    if n < 200:
        return 10
    if n < 5000:
        return 5
    return 3


def make_folds(n: int, seed: int) -> np.ndarray:
    """A fold number per row, balanced and seeded."""
    k = fold_count(n)
    return np.random.default_rng(seed).permutation(n) % k


@dataclass
class Calibration:
    threshold: float
    quantiles: np.ndarray  # values at bundle.QUANTILE_LEVELS
    folds: int
    rows: int
    # Share of rows flagged when each fold is judged by a threshold taken on the other folds:
    # what new normal rows will see, measured on every row.
    cross_validated_rate: float
    # The same with rows tied at their threshold counted as flagged: when many rows score
    # alike (duplicates), no threshold can flag a share between the two rates.
    cross_validated_rate_with_ties: float


def calibrate(oof_scores: np.ndarray, folds: np.ndarray, percentile: float) -> Calibration:
    if not np.isfinite(oof_scores).all():
        raise ValueError("the model produces non-finite scores on held-out rows")
    flagged = flagged_with_ties = 0
    for fold in np.unique(folds):
        job_control.check()
        held = folds == fold
        threshold = np.percentile(oof_scores[~held], percentile)
        flagged += int(np.sum(oof_scores[held] > threshold))
        flagged_with_ties += int(np.sum(oof_scores[held] >= threshold))
    return Calibration(
        threshold=float(np.percentile(oof_scores, percentile)),
        quantiles=np.quantile(oof_scores, bundle.QUANTILE_LEVELS),
        folds=len(np.unique(folds)),
        rows=len(oof_scores),
        cross_validated_rate=flagged / len(oof_scores),
        cross_validated_rate_with_ties=flagged_with_ties / len(oof_scores),
    )


def score_table(oof_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An ensemble member's out-of-fold CDF as (values, levels): quantiles at MEMBER_LEVELS with
    tied values merged into one point at their middle level. Ties are common (duplicate rows
    score 0 in kNN); a CDF that jumps at them would turn float rounding into large differences,
    a line through their middle does not."""
    values = np.quantile(oof_scores, MEMBER_LEVELS)
    unique, inverse = np.unique(values, return_inverse=True)
    levels = np.bincount(inverse, weights=MEMBER_LEVELS) / np.bincount(inverse)
    if len(unique) == 1:  # a constant score: any other value is below or above all of it
        width = 1e-6 * max(1.0, abs(float(unique[0])))
        return np.array([unique[0] - width, unique[0] + width]), np.array([0.0, 1.0])
    return unique, levels


def to_common_scale(scores: np.ndarray, table: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """A member's score on the common ensemble scale: its empirical CDF among out-of-fold
    normal scores (0..1), extended linearly above the table's top in units of (top - median),
    so the most unusual rows keep their order instead of all tying at 1.

    The ONNX graph (`onnx_graphs.common_scale_nodes`) computes exactly this."""
    scores = np.asarray(scores, dtype=np.float64)
    count = np.sum(scores[:, None] >= table[None, :], axis=1)
    lower = np.clip(count - 1, 0, len(table) - 2)
    v_lo, v_hi = table[lower], table[lower + 1]
    t = np.clip((scores - v_lo) / np.maximum(v_hi - v_lo, _EPS), 0.0, 1.0)
    inside = levels[lower] + t * (levels[lower + 1] - levels[lower])
    span = max(float(table[-1] - table[len(table) // 2]), _EPS)
    return inside + np.maximum(scores - table[-1], 0.0) / span


def rounding_allowance(scores: np.ndarray, table: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """How far a member's common-scale score may move when its raw score carries float32
    rounding (FLOAT32_SLACK of its magnitude, at least of the table's): where many normal rows
    score nearly alike the CDF is steep and turns rounding into visible differences. Parity on
    the common scale is judged beyond this, so ties cannot cost a model."""
    scores = np.asarray(scores, dtype=np.float64)
    error = FLOAT32_SLACK * np.maximum(np.abs(scores), max(1.0, float(np.max(np.abs(table)))))
    return to_common_scale(scores + error, table, levels) - to_common_scale(scores - error, table, levels)
