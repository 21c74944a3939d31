"""What every learner shares: its kind and parameters, what the kinds table says of it, and
the out-of-fold scores that calibrate it.

Learners follow estimator conventions: `__init__` stores parameters, `fit` returns self,
learned attributes end in `_`. Anomaly learners have `anomaly_scores(x) -> (scores, feature
errors or None)` (higher = more anomalous; computed by the framework: the parity reference for
the ONNX graph) and `out_of_fold_scores(x, folds)`: every row's score from a model that did not
see it, which is what thresholds and quantile tables are taken from. `fit_cross_fitted(x, folds)`
does both at once; kinds that can train the fold models alongside the served one override it.

Reason to change: the interface every learner offers the training pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from oddity.common import bundle


class Progress(Protocol):
    """Told after every epoch: its number, the most there may be, the loss early stopping
    watches and, from kinds that have them, more figures (train_loss, validation_loss, ...)."""

    def __call__(self, epoch: int, total: int, loss: float, figures: Mapping[str, float] | None = None, /) -> None: ...


def check_params(kind: str, params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} parameters {unknown}; allowed: {sorted(allowed)}")


class Learner:
    """Base of every learner."""

    kind = ""
    PARAMS: set[str] = set()

    def __init__(self, **params: Any) -> None:
        check_params(self.kind, params, self.PARAMS | {"seed"})
        self.params = dict(params)
        self.seed = int(params.get("seed", 0))

    @property
    def is_classifier(self) -> bool:
        return bundle.KINDS[self.kind].is_classifier

    def clone(self) -> Learner:
        """An unfitted learner with the same parameters."""
        return type(self)(**self.params)

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> Learner:
        raise NotImplementedError

    def anomaly_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def to_onnx(self) -> bytes:
        raise NotImplementedError

    def fit_cross_fitted(self, x: np.ndarray, folds: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """Fit on every row and return every row's out-of-fold score."""
        self.fit(x, progress=progress)
        return self.out_of_fold_scores(x, folds)

    def out_of_fold_scores(self, x: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """Cross-fitting: for each fold, a clone fitted on the other folds scores it."""
        scores = np.empty(len(x), dtype=np.float64)
        for fold in np.unique(folds):
            held = folds == fold
            scores[held] = self.clone().fit(x[~held]).anomaly_scores(x[held])[0]
        return scores
