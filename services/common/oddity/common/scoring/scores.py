"""Turning a version's ONNX Runtime outputs into answers: the scoring of routed rows that
assembles `Scores` (raw scores, normalized scores, thresholds, decisions, confidences,
feature contributions; class probabilities and a regression head's score for classifiers),
and the pure numpy rules it uses, shared by every model kind. The detector answers with it,
and so do in-process scorers (`oddity.client.bundle_scoring`), so both give the same numbers.

Reason to change: what a score means (normalization, thresholds, confidence, contributions,
the columns of an answer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from oddity.common import bundle
from oddity.common.bundle.contract import PREDICTED_SCORE_OUTPUT
from oddity.common.errors import FailedPrecondition
from oddity.common.scoring.sessions import GroupSessions, SessionConfig, run_rows
from oddity.v1 import manifest_pb2

_EPS = 1e-12
DEFAULT_CALIBRATION_ROWS = 1000


def normalize(scores: np.ndarray, probabilities: np.ndarray, values: np.ndarray, rows: int) -> np.ndarray:
    """Where each score falls among the `rows` out-of-fold normal scores of the quantile table,
    in [0, 1): 0.97 means "more unusual than 97% of normal samples". Strictly monotone above
    the table's bottom, so the most unusual rows keep their order.

    Inside the table: the empirical CDF scaled by rows / (rows + 1) (the chance that a new normal
    row exceeds all of n normal rows is 1 / (n + 1)); above the top, that last 1 / (n + 1)
    fills in exponentially, in units of (top - median), instead of every score tying at 1.
    """
    share = rows / (rows + 1.0)
    normalized = np.interp(scores, values, probabilities, left=0.0, right=1.0) * share
    top = values[-1]
    over = scores > top
    if over.any():
        span = max(float(top - values[len(values) // 2]), _EPS)
        normalized[over] = 1.0 - (1.0 - share) * np.exp(-(scores[over] - top) / span)
    return normalized


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
        t: np.ndarray | float = min(max(normalized_threshold, _EPS), 1.0 - _EPS)
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


@dataclass(slots=True)
class Scores:
    """Per-row results of one request."""

    scores: np.ndarray
    normalized: np.ndarray
    is_anomaly: np.ndarray
    thresholds: np.ndarray
    confidences: np.ndarray
    # The groups that scored the rows, and per row the position of its group in that list
    # (counting rows per group is one bincount, not a pass over strings).
    group_names: list[str]
    row_groups: np.ndarray
    fallback: np.ndarray
    # Present when top-k explanations were asked for: indices, errors, shares, each [N, k].
    explanations: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # Classifiers: predicted class index per row and class probabilities [N, C]; the anomaly
    # columns above are empty and confidences hold the predicted class's probability.
    classes: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    # Classifiers with a regression head: the predicted score per row.
    predicted_scores: np.ndarray | None = None

    @property
    def groups(self) -> list[str]:
        """The group of every row."""
        names = self.group_names
        if len(names) == 1:
            return names * len(self.row_groups)
        return [names[i] for i in self.row_groups.tolist()]

    def slice(self, start: int, stop: int) -> Scores:
        """Rows start..stop, for splitting a micro-batch back into its requests."""
        explanations = self.explanations
        return Scores(
            scores=self.scores[start:stop],
            normalized=self.normalized[start:stop],
            is_anomaly=self.is_anomaly[start:stop],
            thresholds=self.thresholds[start:stop],
            confidences=self.confidences[start:stop],
            group_names=self.group_names,
            row_groups=self.row_groups[start:stop],
            fallback=self.fallback[start:stop],
            explanations=None
            if explanations is None
            else (explanations[0][start:stop], explanations[1][start:stop], explanations[2][start:stop]),
            classes=None if self.classes is None else self.classes[start:stop],
            probabilities=None if self.probabilities is None else self.probabilities[start:stop],
            predicted_scores=None if self.predicted_scores is None else self.predicted_scores[start:stop],
        )


@dataclass(frozen=True, slots=True)
class GroupScorer:
    """One active group: its session and its score distribution (threshold, quantile table)."""

    name: str
    session: ort.InferenceSession
    has_feature_errors: bool
    has_predicted_score: bool
    threshold: float
    probabilities: np.ndarray
    quantile_values: np.ndarray
    normalized_threshold: float
    calibration_rows: int  # normal scores behind the quantile table
    scratch_bytes_per_row: int = 0  # what the graph takes per row while it runs (0: undeclared)

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        return normalize(scores, self.probabilities, self.quantile_values, self.calibration_rows)

    def decision(self, percentile: float | None) -> tuple[float, float]:
        """(threshold, normalized threshold): the manifest's, or those of a request percentile."""
        if percentile is None:
            return self.threshold, self.normalized_threshold
        threshold = threshold_at(percentile, self.probabilities, self.quantile_values)
        return threshold, float(self.normalize(np.array([threshold]))[0])


class ModelScorer:
    """Scores the routed rows of one model version."""

    def __init__(
        self,
        model: str,
        kind: str,
        groups: Mapping[int, GroupScorer],
        *,
        is_classifier: bool = False,
        class_labels: Sequence[str] = (),
        config: SessionConfig | None = None,
    ) -> None:
        self.model = model
        self.config = config or SessionConfig()
        self.kind = kind
        self.is_classifier = is_classifier
        self.class_labels = list(class_labels)
        self._groups = dict(groups)  # by manifest index; active groups only

    @classmethod
    def from_manifest(
        cls,
        manifest: manifest_pb2.ModelManifest,
        sessions: Mapping[str, GroupSessions],
        config: SessionConfig | None = None,
    ) -> ModelScorer:
        is_classifier = manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION
        groups = {}
        for index, group in enumerate(manifest.groups):
            loaded = sessions.get(group.name)
            if loaded is None:
                continue  # not active: routing sends its rows elsewhere
            probabilities = np.asarray(group.quantiles.probabilities, dtype=np.float64)
            values = np.asarray(group.quantiles.values, dtype=np.float64)
            # Versions calibrated before cross-fitting name no rows: their held-out rows count.
            rows = int(group.calibration.rows or group.validation_samples or DEFAULT_CALIBRATION_ROWS)
            groups[index] = GroupScorer(
                name=group.name,
                session=loaded.session,
                has_feature_errors=loaded.has_feature_errors,
                has_predicted_score=loaded.has_predicted_score,
                threshold=group.threshold,
                probabilities=probabilities,
                quantile_values=values,
                normalized_threshold=0.0
                if is_classifier
                else float(normalize(np.array([group.threshold]), probabilities, values, rows)[0]),
                calibration_rows=rows,
                scratch_bytes_per_row=int(group.scratch_bytes_per_row),
            )
        return cls(
            manifest.name,
            manifest.kind,
            groups,
            is_classifier=is_classifier,
            class_labels=manifest.class_labels,
            config=config,
        )

    @property
    def explains(self) -> bool:
        """Whether every active group reports per-feature errors."""
        return bool(self._groups) and all(group.has_feature_errors for group in self._groups.values())

    def release(self) -> None:
        """Drop the sessions (the version's last request is done)."""
        self._groups = {}

    def _run(self, group: GroupScorer, outputs: Sequence[str], rows: np.ndarray, threads: int) -> list[np.ndarray]:
        """The group's outputs for rows, in runs that keep the call within the memory budget."""
        rows_per_run = self.config.rows_per_run(
            group.scratch_bytes_per_row, rows.shape[0], threads, self.model, group.name
        )
        return run_rows(group.session, outputs, rows, threads, rows_per_run)

    def score(
        self,
        rows: np.ndarray,
        used: Sequence[int],
        row_group: np.ndarray,
        fallback: np.ndarray,
        threshold_percentile: float | None,
        explain_top_k: int,
        bulk: bool,
    ) -> Scores:
        """Score validated rows [N, D] routed by `Router.route` (`used`, `row_group`, `fallback`);
        `bulk` splits large calls over the config's bulk threads (same numbers)."""
        if self.is_classifier:
            return self._classify(rows, used, row_group, fallback, threshold_percentile, explain_top_k, bulk)
        groups = self._groups
        n = rows.shape[0]
        threads = self.config.threads(bulk)
        if explain_top_k and not all(groups[i].has_feature_errors for i in used):
            raise FailedPrecondition(
                f"model {self.model!r} ({self.kind}) does not report per-feature errors; set explain_top_k to 0"
            )
        outputs = [bundle.SCORE_OUTPUT, bundle.FEATURE_ERRORS_OUTPUT] if explain_top_k else [bundle.SCORE_OUTPUT]
        errors: np.ndarray | None = None
        if len(used) == 1:
            group = groups[used[0]]
            results = self._run(group, outputs, rows, threads)
            raw = results[0].reshape(-1).astype(np.float64)
            if explain_top_k:
                errors = results[1]
            threshold, normalized_threshold = group.decision(threshold_percentile)
            normalized = group.normalize(raw)
            thresholds = np.full(n, threshold)
            is_anomaly = raw > threshold
            confidences = confidence(normalized, normalized_threshold, is_anomaly)
            names = [group.name]
        else:
            raw = np.empty(n, dtype=np.float64)
            if explain_top_k:
                errors = np.empty(rows.shape, dtype=np.float32)
            normalized = np.empty(n, dtype=np.float64)
            thresholds = np.empty(n, dtype=np.float64)
            normalized_thresholds = np.empty(n, dtype=np.float64)
            names = []
            for position, index in enumerate(used):
                group = groups[index]
                names.append(group.name)
                mask = row_group == position
                results = self._run(group, outputs, np.ascontiguousarray(rows[mask]), threads)
                raw[mask] = results[0].reshape(-1)
                if errors is not None:
                    errors[mask] = results[1]
                normalized[mask] = group.normalize(raw[mask])
                thresholds[mask], normalized_thresholds[mask] = group.decision(threshold_percentile)
            is_anomaly = raw > thresholds
            confidences = confidence(normalized, normalized_thresholds, is_anomaly)
        return Scores(
            scores=raw,
            normalized=normalized,
            is_anomaly=is_anomaly,
            thresholds=thresholds,
            confidences=confidences,
            group_names=names,
            row_groups=row_group,
            fallback=fallback,
            explanations=top_contributions(errors, explain_top_k) if errors is not None else None,
        )

    def _classify(
        self,
        rows: np.ndarray,
        used: Sequence[int],
        row_group: np.ndarray,
        fallback: np.ndarray,
        threshold_percentile: float | None,
        explain_top_k: int,
        bulk: bool,
    ) -> Scores:
        if threshold_percentile is not None or explain_top_k:
            raise FailedPrecondition(
                f"model {self.model!r} is a classifier: threshold_percentile and explain_top_k do not apply"
            )
        threads = self.config.threads(bulk)
        probabilities = np.empty((rows.shape[0], len(self.class_labels)), dtype=np.float32)
        # A regression head's score, when every group that scores has one.
        with_scores = all(self._groups[index].has_predicted_score for index in used)
        predicted = np.empty(rows.shape[0], dtype=np.float64) if with_scores else None
        outputs = [bundle.PROBABILITIES_OUTPUT, *([PREDICTED_SCORE_OUTPUT] if with_scores else [])]
        names = []
        for position, index in enumerate(used):
            group = self._groups[index]
            names.append(group.name)
            mask = row_group == position
            part = rows if len(used) == 1 else np.ascontiguousarray(rows[mask])
            results = self._run(group, outputs, part, threads)
            probabilities[mask] = results[0]
            if predicted is not None:
                predicted[mask] = results[1].reshape(-1)
        classes = np.argmax(probabilities, axis=1)
        empty = np.empty(0)
        return Scores(
            scores=empty,
            normalized=empty,
            is_anomaly=np.empty(0, dtype=bool),
            thresholds=empty,
            confidences=probabilities[np.arange(len(classes)), classes].astype(np.float64),
            group_names=names,
            row_groups=row_group,
            fallback=fallback,
            classes=classes,
            probabilities=probabilities,
            predicted_scores=predicted,
        )
