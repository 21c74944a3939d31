"""Model kinds: one learner per kind of `oddity.common.bundle.KINDS`.

Every learner's ONNX graph keeps the bundle contract: input "input" takes raw features
(scaling inside the graph); anomaly detectors output "score" (higher = more anomalous; those
that explain also "feature_errors"), classifiers "label" and "probabilities" (with a regression
head also "predicted_score").

Reason to change: which learner serves which kind.
"""

from __future__ import annotations

from typing import Any

from oddity.trainer.learners.autoencoder import AutoencoderLearner
from oddity.trainer.learners.base import Learner, Progress
from oddity.trainer.learners.ensemble import AutoLearner, EnsembleLearner
from oddity.trainer.learners.knn import KnnLearner
from oddity.trainer.learners.mlp import MlpClassifierLearner
from oddity.trainer.learners.scikit import (
    IsolationForestLearner,
    LogisticLearner,
    OneClassSvmLearner,
    RandomForestLearner,
    SvmLearner,
)

LEARNERS: dict[str, type[Learner]] = {
    cls.kind: cls
    for cls in (
        AutoLearner,
        AutoencoderLearner,
        EnsembleLearner,
        KnnLearner,
        IsolationForestLearner,
        OneClassSvmLearner,
        RandomForestLearner,
        SvmLearner,
        LogisticLearner,
        MlpClassifierLearner,
    )
}


def make_learner(kind: str, params: dict[str, Any]) -> Learner:
    try:
        return LEARNERS[kind](**params)
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(LEARNERS)}") from None


__all__ = ["LEARNERS", "Learner", "Progress", "make_learner"]
