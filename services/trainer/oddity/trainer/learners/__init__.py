"""Model kinds: one learner class per kind, found through the registry (registry.py). Importing
this package registers the built-in kinds (those of `oddity.common.bundle.KINDS`); another
kind joins by registering its own class.

Every learner's ONNX graph keeps the bundle contract: input "input" takes raw features
(scaling inside the graph); anomaly detectors output "score" (higher = more anomalous; those
that explain also "feature_errors"), classifiers "label" and "probabilities" (with a regression
head also "predicted_score").

Reason to change: which learners are built in.
"""

from __future__ import annotations

from oddity.trainer.learners.autoencoder import AutoencoderLearner
from oddity.trainer.learners.base import AnomalyLearner, ClassifierLearner, Learner, Member, Progress
from oddity.trainer.learners.ensemble import AutoLearner, EnsembleLearner
from oddity.trainer.learners.gaussian import MahalanobisLearner, PcaLearner
from oddity.trainer.learners.knn import KnnLearner
from oddity.trainer.learners.mlp import MlpClassifierLearner
from oddity.trainer.learners.registry import (
    kinds,
    learner_class,
    learners,
    load_entry_points,
    make_anomaly_learner,
    make_classifier,
    make_learner,
    register_learner,
    unregister_learner,
)
from oddity.trainer.learners.scikit import (
    IsolationForestLearner,
    LogisticLearner,
    OneClassSvmLearner,
    RandomForestLearner,
)
from oddity.trainer.learners.svm import SvmLearner

BUILT_IN: tuple[type[Learner], ...] = (
    AutoLearner,
    AutoencoderLearner,
    EnsembleLearner,
    KnnLearner,
    MahalanobisLearner,
    PcaLearner,
    IsolationForestLearner,
    OneClassSvmLearner,
    RandomForestLearner,
    SvmLearner,
    LogisticLearner,
    MlpClassifierLearner,
)

__all__ = [
    "BUILT_IN",
    "AnomalyLearner",
    "AutoencoderLearner",
    "ClassifierLearner",
    "Learner",
    "Member",
    "Progress",
    "kinds",
    "learner_class",
    "learners",
    "load_entry_points",
    "make_anomaly_learner",
    "make_classifier",
    "make_learner",
    "register_learner",
    "unregister_learner",
]
