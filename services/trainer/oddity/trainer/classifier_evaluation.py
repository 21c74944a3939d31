"""How a classifier did on its held-out rows: accuracy, balanced accuracy, macro F1, per-class
precision and recall, the confusion matrix, the expected calibration error of its
probabilities before and after temperature scaling and, with a regression head, the mean
absolute error of its score. The figures the manifest records, GetStatus shows and the gate
compares.

Reason to change: which figures judge a classifier and how they are computed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn import metrics

from oddity.v1 import manifest_pb2

CALIBRATION_BINS = 15


@dataclass(frozen=True)
class Evaluation:
    classes: list[str]
    rows: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    precision: np.ndarray  # per class, in the order of `classes`
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray  # [classes, classes]: rows are the truth, columns the prediction
    ece_before_temperature: float
    ece_after_temperature: float
    temperature: float
    temperature_scaled: bool = False  # whether the kind fits a temperature (mlp_classifier)
    score_mae: float | None = None

    def figures(self) -> dict[str, float]:
        """The headline figures, for the group's metrics (history, /metrics, GetStatus):
        accuracy, balanced and macro F1, the calibration error of the probabilities as served
        and, where a temperature was fitted, the error before it and the temperature."""
        figures = {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "macro_f1": self.macro_f1,
            "expected_calibration_error": self.ece_after_temperature,
        }
        if self.temperature_scaled:
            figures.update(ece_before_temperature=self.ece_before_temperature, temperature=self.temperature)
        if self.score_mae is not None:
            figures["score_mae"] = self.score_mae
        return figures

    def to_proto(self) -> manifest_pb2.ClassifierEvaluation:
        evaluation = manifest_pb2.ClassifierEvaluation(
            rows=self.rows,
            accuracy=self.accuracy,
            balanced_accuracy=self.balanced_accuracy,
            macro_f1=self.macro_f1,
            confusion_matrix=self.confusion.reshape(-1).tolist(),
            ece_before_temperature=self.ece_before_temperature,
            ece_after_temperature=self.ece_after_temperature,
            temperature=self.temperature,
            calibration_bins=CALIBRATION_BINS,
        )
        for i, label in enumerate(self.classes):
            evaluation.classes.add(
                label=label,
                precision=float(self.precision[i]),
                recall=float(self.recall[i]),
                f1=float(self.f1[i]),
                support=int(self.support[i]),
            )
        if self.score_mae is not None:
            evaluation.score_mae = self.score_mae
        return evaluation


def balanced_accuracy(classes: np.ndarray, probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean recall over the classes present in `labels` (the gate's figure)."""
    predicted = classes[np.argmax(probabilities, axis=1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class predicted but absent from the rows
        return float(metrics.balanced_accuracy_score(labels, predicted))


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Sum over equal-width bins of the predicted class's probability: the bin's share of rows
    times |accuracy - mean probability| in it (`truth`: class indices)."""
    if len(truth) == 0:
        return 0.0
    confidence = probabilities.max(axis=1).astype(np.float64)
    correct = (probabilities.argmax(axis=1) == truth).astype(np.float64)
    # Bin i holds confidences in (i/bins, (i+1)/bins]; a confidence of exactly 0 joins the first.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    gaps = np.abs(np.bincount(which, correct, bins) - np.bincount(which, confidence, bins))
    return float(gaps.sum() / len(truth)) if counts.any() else 0.0


def evaluate(
    classes: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    uncalibrated: np.ndarray | None = None,
    temperature: float = 1.0,
    predicted_scores: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> Evaluation:
    """Judge served probabilities [N, C] (in the order of `classes`) against the true `labels`;
    `uncalibrated`: the probabilities before temperature scaling (default: the same)."""
    names = [str(c) for c in classes]
    truth = np.searchsorted(classes, labels)
    known = (truth < len(classes)) & (classes[np.minimum(truth, len(classes) - 1)] == labels)
    truth = np.where(known, truth, -1)  # a held-out class the model never saw counts as always wrong
    predicted = np.argmax(probabilities, axis=1)
    indices = np.arange(len(classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without held-out rows or predictions: zero_division
        precision, recall, f1, support = metrics.precision_recall_fscore_support(
            truth, predicted, labels=indices, zero_division=0
        )
        balanced = float(metrics.balanced_accuracy_score(truth, predicted))
        # Macro F1 over the classes that occur among the rows or the predictions.
        present = indices[(support > 0) | np.isin(indices, predicted)]
        macro_f1 = float(metrics.f1_score(truth, predicted, labels=present, average="macro", zero_division=0))
    before = uncalibrated if uncalibrated is not None else probabilities
    mae = None
    if predicted_scores is not None and targets is not None and len(targets):
        mae = float(metrics.mean_absolute_error(targets, predicted_scores))
    return Evaluation(
        classes=names,
        rows=len(labels),
        accuracy=float(metrics.accuracy_score(truth, predicted)),
        balanced_accuracy=balanced,
        macro_f1=macro_f1,
        precision=precision,
        recall=recall,
        f1=f1,
        support=support,
        confusion=metrics.confusion_matrix(truth, predicted, labels=indices),
        ece_before_temperature=expected_calibration_error(before, truth),
        ece_after_temperature=expected_calibration_error(probabilities, truth),
        temperature=float(temperature),
        temperature_scaled=uncalibrated is not None,
        score_mae=mae,
    )
