"""The mahalanobis and pca kinds: normal rows as one Gaussian cloud in standardized features.

`mahalanobis` scores a row by its squared distance to the normal rows' mean under a shrinkage
covariance (Ledoit-Wolf): the strongest simple detector on pretrained deep features (Rippel
et al., "Modeling the Distribution of Normal Data in Pre-Trained Deep Features for Anomaly
Detection", ICPR 2020), and cheap to serve. The graph is centering, one MatMul with the
symmetric (ZCA) square root of the precision matrix and a sum of squares; because that root
keeps each whitened axis nearest its own feature, each feature's squared whitened residual is
its share of the score, and the shares sum to it.

`pca` scores a row by its reconstruction error outside the top principal components (those
explaining `variance` of the total, 0.95 by default): a row that breaks the correlations the
normal rows keep. The graph is one MatMul with the projection onto the discarded components;
each feature's squared residual is its share.

`whitening()` is shared with kNN's `metric: whitened`. Covariances come from at most
COVARIANCE_ROWS rows (a seeded sample): their cost is rows x features^2.

Reason to change: how the Gaussian view of normal rows is fitted and exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnx import TensorProto, helper
from sklearn.covariance import ledoit_wolf

from oddity.common import bundle
from oddity.trainer import job_control
from oddity.trainer.learners.base import AnomalyLearner, Progress
from oddity.trainer.learners.dense_graphs import GraphBuilder
from oddity.trainer.learners.registry import register_learner

COVARIANCE_ROWS = 20_000
# Eigenvalues below this share of the largest are floored: directions the rows never vary in
# would otherwise weigh a rounding error as much as a real deviation.
EIGEN_FLOOR = 1e-6
SCALE_FLOOR = 1e-6  # as kNN: a constant feature keeps a finite scale


@dataclass(frozen=True)
class Whitening:
    """Standardization (mean, scale) and the ZCA matrix of the shrinkage covariance: whitened
    rows are ((x - mean) / scale) @ matrix."""

    mean: np.ndarray
    scale: np.ndarray
    matrix: np.ndarray
    shrinkage: float

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.matrix


def standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's mean and scale (its deviation, floored so a constant feature stays finite)."""
    return x.mean(axis=0).astype(np.float64), x.std(axis=0).astype(np.float64) + SCALE_FLOOR


def _standardized_sample(x: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, scale = standardization(x)
    rows = x
    if len(x) > COVARIANCE_ROWS:
        rows = x[np.sort(np.random.default_rng(seed).choice(len(x), COVARIANCE_ROWS, replace=False))]
    return mean, scale, (np.asarray(rows, np.float64) - mean) / scale


def _eigen(covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first, floored) and eigenvectors of a covariance matrix."""
    values, vectors = np.linalg.eigh(covariance)
    values, vectors = values[::-1], vectors[:, ::-1]
    floor = EIGEN_FLOOR * max(float(values[0]), 1e-12)
    return np.maximum(values, floor), vectors


def whitening(x: np.ndarray, seed: int) -> Whitening:
    """The shrinkage (Ledoit-Wolf) whitening of `x`'s standardized features."""
    mean, scale, z = _standardized_sample(x, seed)
    job_control.check()
    covariance, shrinkage = ledoit_wolf(z, assume_centered=True)
    job_control.check()
    values, vectors = _eigen(covariance)
    return Whitening(mean, scale, (vectors / np.sqrt(values)) @ vectors.T, float(shrinkage))


class _LinearResidualLearner(AnomalyLearner):
    """A detector whose score is the sum of squares of ((x - mean) / scale) @ matrix; the
    squares are the per-feature errors. Subclasses fit mean_, scale_ and matrix_."""

    explains = True
    mean_: np.ndarray
    scale_: np.ndarray
    matrix_: np.ndarray

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> AnomalyLearner:
        if len(x) < 2:
            raise ValueError(f"{self.kind} needs at least 2 rows")
        self._fit_matrix(np.asarray(x))
        if progress is not None:
            progress(1, 1, 0.0)
        return self

    def _fit_matrix(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def anomaly_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        residual = ((np.asarray(x, np.float64) - self.mean_) / self.scale_) @ self.matrix_
        squares = residual * residual
        return squares.sum(axis=1), squares.astype(np.float32)

    def to_onnx(self) -> bytes:
        # The standardization's division folds into the matrix: one Sub, one MatMul.
        d = len(self.mean_)
        g = GraphBuilder(f"{self.kind}_")
        centred = g.node("Sub", [bundle.INPUT_NAME, g.const("mean", self.mean_)], "centred")
        folded = self.matrix_ / self.scale_[:, None]
        residual = g.node("MatMul", [centred, g.const("matrix", folded)], "residual")
        squares = g.node("Mul", [residual, residual], bundle.FEATURE_ERRORS_OUTPUT)
        g.node("ReduceSum", [squares, g.const("axis", [1], np.int64)], bundle.SCORE_OUTPUT, keepdims=0)
        return g.model(
            f"oddity_{self.kind}",
            d,
            [
                helper.make_tensor_value_info(bundle.SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
                helper.make_tensor_value_info(bundle.FEATURE_ERRORS_OUTPUT, TensorProto.FLOAT, ["N", d]),
            ],
        )


@register_learner
class MahalanobisLearner(_LinearResidualLearner):
    kind = "mahalanobis"

    def _fit_matrix(self, x: np.ndarray) -> None:
        fitted = whitening(x, self.seed)
        self.mean_, self.scale_, self.matrix_ = fitted.mean, fitted.scale, fitted.matrix
        self.shrinkage_ = fitted.shrinkage

    def training_figures(self) -> dict[str, float]:
        return {"covariance_shrinkage": self.shrinkage_}


@register_learner
class PcaLearner(_LinearResidualLearner):
    kind = "pca"
    PARAMS = {"variance"}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.variance = float(params.get("variance", 0.95))

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        variance = float(params.get("variance", 0.95))
        if not 0.0 < variance < 1.0:
            raise ValueError(f"pca: variance must lie in (0, 1), got {variance}")

    def _fit_matrix(self, x: np.ndarray) -> None:
        self.mean_, self.scale_, z = _standardized_sample(x, self.seed)
        job_control.check()
        values, vectors = _eigen(np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]))
        explained = np.cumsum(values) / values.sum()
        # At least one component is kept and at least one discarded: a residual must exist.
        needed = int(np.searchsorted(explained, self.variance)) + 1
        kept = min(needed, max(len(values) - 1, 1))
        top = vectors[:, :kept]
        self.components_ = kept
        self.matrix_ = np.eye(len(values)) - top @ top.T

    def training_figures(self) -> dict[str, float]:
        return {"components": float(self.components_)}
