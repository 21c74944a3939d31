"""What every learner offers the training pipeline, by task: `AnomalyLearner` (scores, their
out-of-fold calibration, the evidence a manifest records) and `ClassifierLearner` (classes,
probabilities, an optional regression head, epochs). A kind is a learner class that declares
what the pipeline and the spec need to know of it (task, explanations, a regression head, its
PARAMS) and joins the registry (registry.py); nothing else names it.

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
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from oddity.common import bundle
from oddity.trainer import job_control
from oddity.trainer.checkpoints import GroupCheckpoints


class Progress(Protocol):
    """Told after every epoch: its number, the most there may be, the loss early stopping
    watches and, from kinds that have them, more figures (train_loss, validation_loss, ...)."""

    def __call__(self, epoch: int, total: int, loss: float, figures: Mapping[str, float] | None = None, /) -> None: ...


def check_params(kind: str, params: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} parameters {unknown}; allowed: {sorted(allowed)}")


@dataclass
class Member:
    """One member (or candidate) of a combined detector, with the evidence behind its weight."""

    kind: str
    params: dict[str, Any]
    weight: float = 1.0
    note: str = ""

    @property
    def label(self) -> str:
        metric = self.params.get("metric")
        return f"{self.kind}({metric})" if metric else self.kind


class Learner:
    """Base of every learner: a kind's declaration and its parameters."""

    kind: ClassVar[str] = ""
    task: ClassVar[int] = 0  # manifest_pb2.ModelTask, set by AnomalyLearner and ClassifierLearner
    #: The graph outputs per-feature errors (explanations) beside the score.
    explains: ClassVar[bool] = False
    #: A classifier that can also predict a continuous value (the spec's score_column).
    score_head: ClassVar[bool] = False
    PARAMS: ClassVar[set[str]] = set()
    #: What the kind's progress calls count: "epoch" (with a loss), "member" or "step".
    progress_unit: ClassVar[str] = "step"

    def __init__(self, **params: Any) -> None:
        self.check_params(params)
        self.params = dict(params)
        self.seed = int(params.get("seed", 0))

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        """Raise ValueError when `params` are not this kind's: called when a spec is read (no
        learner is built then) and by `__init__`. Kinds that check values extend it."""
        check_params(cls.kind, params, cls.PARAMS | {"seed"})
        int(params.get("seed", 0))  # ValueError for a seed that is no number

    @classmethod
    def is_classifier_kind(cls) -> bool:
        return cls.task == bundle.CLASSIFICATION

    @property
    def is_classifier(self) -> bool:
        return self.is_classifier_kind()

    def clone(self) -> Learner:
        """An unfitted learner with the same parameters."""
        return type(self)(**self.params)

    def to_onnx(self) -> bytes:
        raise NotImplementedError

    def training_figures(self) -> dict[str, float]:
        """Figures of the training itself the group's metrics record (e.g. epochs run)."""
        return {}


class AnomalyLearner(Learner):
    """A detector: higher scores are more anomalous; thresholds come from out-of-fold scores."""

    task = bundle.ANOMALY_DETECTION
    #: How the out-of-fold scores are made, as the manifest's calibration records it.
    calibration_method: ClassVar[str] = "cross_fit"

    def clone(self) -> AnomalyLearner:
        return type(self)(**self.params)

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> AnomalyLearner:
        raise NotImplementedError

    def anomaly_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def fit_cross_fitted(self, x: np.ndarray, folds: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """Fit on every row and return every row's out-of-fold score."""
        self.fit(x, progress=progress)
        return self.out_of_fold_scores(x, folds)

    def out_of_fold_scores(self, x: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """Cross-fitting: for each fold, a clone fitted on the other folds scores it."""
        scores = np.empty(len(x), dtype=np.float64)
        for fold in np.unique(folds):
            job_control.check()
            held = folds == fold
            scores[held] = self.clone().fit(x[~held]).anomaly_scores(x[held])[0]
        return scores

    def parity_allowance(self, x: np.ndarray) -> np.ndarray:
        """Per row, how far the ONNX graph's score may differ from anomaly_scores(x) through
        float32 rounding alone (0 for kinds whose scores carry rounding at their own scale)."""
        return np.zeros(len(x))

    def evidence(self) -> list[Member]:
        """Combined detectors: every member considered, with its weight and evidence."""
        return []

    def selection(self) -> str:
        """Detectors that choose among candidates (auto): what they chose and why, in one line
        ("" for the others)."""
        return ""


class ClassifierLearner(Learner):
    """A classifier: class probabilities in the order of `classes_`, and with a regression head
    a continuous score beside them."""

    task = bundle.CLASSIFICATION
    classes_: np.ndarray

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        progress: Progress | None = None,
        *,
        targets: np.ndarray | None = None,
        checkpoints: GroupCheckpoints | None = None,
    ) -> ClassifierLearner:
        """`targets`: the score column's values, for kinds with a regression head; `checkpoints`:
        where kinds that train in epochs keep (and resume from) their state. Others ignore both."""
        raise NotImplementedError

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities computed by the framework (the parity reference), [N, C]."""
        raise NotImplementedError

    def predict_scores(self, x: np.ndarray) -> np.ndarray | None:
        """The regression head's value per row (None: no head)."""
        return None

    def uncalibrated_proba(self, x: np.ndarray) -> np.ndarray | None:
        """Probabilities before the kind's own calibration (None: it has none)."""
        return None

    @property
    def temperature(self) -> float:
        """The temperature the probabilities were scaled by (1: none)."""
        return 1.0

    def epoch_history(self) -> list[dict[str, float]] | None:
        """Kinds that train in epochs: each epoch's figures (None: no epochs)."""
        return None

    @property
    def resumed_from_epoch(self) -> int:
        """The checkpoint epoch training went on from (0: it started afresh)."""
        return 0
