"""What Detect and DetectImages answer, as numpy columns and a pandas frame.

`DetectResult.to_frame()` has one row per scored row. Anomaly models: `score` (raw, higher is
more unusual), `normalized_score` (share of the group's normal rows that are less unusual),
`is_anomaly`, `threshold`, `confidence`, `group`, `fallback` (the `all` group stood in), and
with explanations `top_features`: "name:share;name:share;..." — the features with the
largest errors, largest first, each with its share of the row's error to two decimals,
e.g. "sensor_3:0.61;sensor_1:0.22;sensor_0:0.09". Classifiers: `predicted_class`,
`confidence` (the predicted class's probability), `group`, one `probability_<label>`
column per class, and `predicted_score` when the model has a regression head.

Reason to change: the DetectResponse message, or how its columns are shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from oddity.common.tensors import tensor_to_array
from oddity.v1 import detector_pb2

ANOMALY_COLUMNS = ("score", "normalized_score", "is_anomaly", "threshold", "confidence", "group", "fallback")
TOP_FEATURES_COLUMN = "top_features"
CLASSIFIER_COLUMNS = ("predicted_class", "confidence", "group")
PROBABILITY_PREFIX = "probability_"


@dataclass(frozen=True)
class Contribution:
    """One feature of a row's explanation."""

    name: str
    index: int
    share: float  # of the row's total error, in [0, 1] (the message's `contribution`)
    error: float  # the feature's own squared error, in standardized units

    @classmethod
    def from_proto(cls, feature: detector_pb2.FeatureContribution) -> Contribution:
        # By hand, not from_message: one per row and explained feature, this is a hot path
        # (about half the time); tests/client/test_sdk_mirrors.py still compares the fields.
        return cls(feature.name, feature.index, feature.contribution, feature.error)


@dataclass
class DetectResult:
    """Per-row results of one Detect (or DetectImages) call, as parallel columns."""

    response: detector_pb2.DetectResponse
    #: The input DataFrame's index, kept on the frame so results join back onto the input.
    index: pd.Index | None = None
    #: DetectImages only: the embedder model and revision that made the vectors.
    embedder_model_id: str = ""
    embedder_revision: str = ""

    @property
    def model(self) -> str:
        return self.response.model

    @property
    def version(self) -> int:
        return self.response.model_version

    @property
    def kind(self) -> str:
        return self.response.kind

    @property
    def classifier(self) -> bool:
        return len(self.response.predicted_classes) > 0

    def __len__(self) -> int:
        return len(self.response.predicted_classes) or len(self.response.scores)

    @cached_property
    def scores(self) -> np.ndarray:
        return np.array(self.response.scores, dtype=np.float64)

    @cached_property
    def normalized_scores(self) -> np.ndarray:
        return np.array(self.response.normalized_scores, dtype=np.float64)

    @cached_property
    def is_anomaly(self) -> np.ndarray:
        return np.array(self.response.is_anomaly, dtype=bool)

    @cached_property
    def thresholds(self) -> np.ndarray:
        return np.array(self.response.thresholds, dtype=np.float64)

    @cached_property
    def confidences(self) -> np.ndarray:
        return np.array(self.response.confidences, dtype=np.float64)

    @cached_property
    def groups(self) -> list[str]:
        """The group that scored each row."""
        response = self.response
        names = list(response.group_names)
        if not names or len(response.groups):  # the per-row names were sent (or an older detector)
            return list(response.groups)
        if len(response.row_groups) == 0:  # one group scored every row
            return names * len(response.confidences)
        return [names[i] for i in response.row_groups]

    @cached_property
    def fallback(self) -> np.ndarray:
        return np.array(self.response.fallback, dtype=bool)

    @cached_property
    def explanations(self) -> list[list[Contribution]]:
        """Per row, its top features (empty when explain_top_k was 0)."""
        return [
            [Contribution.from_proto(f) for f in explanation.features] for explanation in self.response.explanations
        ]

    @cached_property
    def top_features(self) -> list[str]:
        """Per row, "name:share;..." (see the module docstring); empty without explanations."""
        return [
            ";".join(f"{f.name}:{f.contribution:.2f}" for f in explanation.features)
            for explanation in self.response.explanations
        ]

    @cached_property
    def predicted_classes(self) -> list[str]:
        return list(self.response.predicted_classes)

    @cached_property
    def probabilities(self) -> np.ndarray | None:
        """[rows, classes] in the order of `class_labels`; classifiers only."""
        if not self.response.HasField("probabilities"):
            return None
        return tensor_to_array(self.response.probabilities, field="probabilities")

    @property
    def class_labels(self) -> list[str]:
        return list(self.response.class_labels)

    def to_frame(self) -> pd.DataFrame:
        """One row per scored row (columns in the module docstring)."""
        if self.classifier:
            columns: dict[str, Any] = {
                "predicted_class": self.predicted_classes,
                "confidence": self.confidences,
                "group": self.groups,
            }
            if self.probabilities is not None:
                for i, label in enumerate(self.class_labels):
                    columns[f"{PROBABILITY_PREFIX}{label}"] = self.probabilities[:, i].astype(np.float64)
            if len(self.response.predicted_scores):  # the model's regression head
                columns["predicted_score"] = np.asarray(self.response.predicted_scores, dtype=np.float64)
        else:
            columns = {
                "score": self.scores,
                "normalized_score": self.normalized_scores,
                "is_anomaly": self.is_anomaly,
                "threshold": self.thresholds,
                "confidence": self.confidences,
                "group": self.groups,
                "fallback": self.fallback,
            }
            if len(self.response.explanations):
                columns[TOP_FEATURES_COLUMN] = self.top_features
        return pd.DataFrame(columns, index=self.index)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per row: the frame's columns, explanations as lists of features."""
        records = []
        frame = self.to_frame().drop(columns=[TOP_FEATURES_COLUMN], errors="ignore")
        for i, row in enumerate(frame.to_dict(orient="records")):
            record = {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
            if len(self.response.explanations):
                record[TOP_FEATURES_COLUMN] = [
                    {"name": c.name, "share": c.share, "error": c.error} for c in self.explanations[i]
                ]
            records.append(record)
        return records
