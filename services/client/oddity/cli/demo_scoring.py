"""Scoring the demo's held-out files with the serving models, and the figures per model and
group: ROC-AUC of held-out normal against anomalous, the share flagged of each, and the top
feature of the most unusual row.

Anomaly models: ROC-AUC of the raw score (within one group scores share one scale), flagged =
`is_anomaly`. The classifier: its positive class is `deny`; ROC-AUC of P(deny) against the
true decision, flagged = predicted `deny` (share among the true approvals and the true
denials), and its accuracy. Each scored file is also written next to the held-out one
(`<name>-scored.csv`: the held-out columns, then the results).

Reason to change: which figures the demo reports, or how they are computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from oddity.cli.demo_data import ANOMALOUS, DECISION, EXPECTED, POSITIVE_CLASS, DemoDataset
from oddity.client import DetectorClient, DetectResult, FailedPrecondition
from oddity.v1 import manifest_pb2


@dataclass(frozen=True)
class GroupFigures:
    dataset: str
    model: str
    kind: str
    version: int
    group: str
    rows: int
    normal: int  # held-out normal rows (the classifier: true approvals)
    anomalous: int  # held-out anomalous rows (the classifier: true denials)
    roc_auc: float | None  # None when the group's rows are all of one class
    flagged_normal: float  # share of the normal rows flagged (the classifier: predicted deny)
    flagged_anomalous: float
    accuracy: float | None  # classifiers only
    top_explanation: str | None  # "feature:share" of the group's most unusual row (models that explain)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Probability that a positive row scores above a negative one (ties count half): the
    Mann-Whitney statistic from average ranks. None when either class is missing."""
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _share(flags: np.ndarray, among: np.ndarray) -> float:
    return float(flags[among].mean()) if among.any() else 0.0


def _detect_rows(detector: DetectorClient, model: str, frame: pd.DataFrame) -> DetectResult:
    """The rows' results, with each row's leading feature when the model explains its scores
    (a classifier is never asked: it answers FAILED_PRECONDITION, a warning in its log)."""
    if detector.model(model).manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION:
        return detector.detect(model, frame)
    try:
        return detector.detect(model, frame, explain_top_k=1)
    except FailedPrecondition:  # a model that does not explain its scores
        return detector.detect(model, frame)


def score_held_out(detector: DetectorClient, dataset: DemoDataset, model: str) -> list[GroupFigures]:
    """Score the dataset's held-out file with `model`; figures per group the detector used."""
    frame = pd.read_csv(dataset.held_out)
    if dataset.kind == "images":
        paths = [dataset.held_out.parent / name for name in frame["file"]]
        result = detector.detect_images(model, paths, routing_values=frame["age"].tolist())
    elif dataset.kind == "texts":
        result = detector.detect_images(model, texts=frame["text"].astype(str).tolist())
    else:
        result = _detect_rows(detector, model, frame)
    scored = pd.concat([frame.reset_index(drop=True), result.to_frame().reset_index(drop=True)], axis=1)
    scored.to_csv(scored_path(dataset.held_out), index=False)
    if dataset.kind == "classifier":
        return [_classifier_figures(dataset, model, frame, result)]
    return _anomaly_figures(dataset, model, frame, result)


def scored_path(held_out: Path) -> Path:
    return held_out.with_name(held_out.name.replace("-held-out.csv", "-scored.csv"))


def _anomaly_figures(dataset: DemoDataset, model: str, frame: pd.DataFrame, result: DetectResult) -> list[GroupFigures]:
    anomalous = (frame[EXPECTED] == ANOMALOUS).to_numpy()
    groups = np.array(result.groups)
    explanations = result.explanations
    figures = []
    for group in sorted(set(result.groups)):
        rows = groups == group
        scores = result.scores[rows]
        flags = result.is_anomaly[rows]
        truth = anomalous[rows]
        top = None
        if explanations:
            worst = int(np.flatnonzero(rows)[int(np.argmax(scores))])
            if explanations[worst]:
                first = explanations[worst][0]
                top = f"{first.name}:{first.share:.2f}"
        figures.append(
            GroupFigures(
                dataset=dataset.name,
                model=model,
                kind=result.kind,
                version=result.version,
                group=group,
                rows=int(rows.sum()),
                normal=int((~truth).sum()),
                anomalous=int(truth.sum()),
                roc_auc=roc_auc(scores, truth),
                flagged_normal=_share(flags, ~truth),
                flagged_anomalous=_share(flags, truth),
                accuracy=None,
                top_explanation=top,
            )
        )
    return figures


def _classifier_figures(dataset: DemoDataset, model: str, frame: pd.DataFrame, result: DetectResult) -> GroupFigures:
    truth = (frame[DECISION] == POSITIVE_CLASS).to_numpy()
    predicted = np.array(result.predicted_classes)
    probabilities = result.probabilities
    if probabilities is None or POSITIVE_CLASS not in result.class_labels:
        raise FailedPrecondition(f"model {model!r} does not answer with a probability of {POSITIVE_CLASS!r}")
    p_deny = probabilities[:, result.class_labels.index(POSITIVE_CLASS)]
    flags = predicted == POSITIVE_CLASS
    return GroupFigures(
        dataset=dataset.name,
        model=model,
        kind=result.kind,
        version=result.version,
        group=result.groups[0] if result.groups else "all",
        rows=len(frame),
        normal=int((~truth).sum()),
        anomalous=int(truth.sum()),
        roc_auc=roc_auc(p_deny, truth),
        flagged_normal=_share(flags, ~truth),
        flagged_anomalous=_share(flags, truth),
        accuracy=float((predicted == frame[DECISION].to_numpy()).mean()),
        top_explanation=None,
    )
