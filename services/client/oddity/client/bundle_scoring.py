"""A published version scored in this process, with exactly the detector's answers: the same
verified files (ONNX graphs, routing, quantile tables and thresholds from the manifest), the
same scoring code (`oddity.common.scoring`) and the same ONNX Runtime session options. For
batch jobs that already run on an engine of their own (Spark's `mapInPandas`, see
`oddity.client.spark_scoring`, or any pandas/Arrow pipeline): no detector, no network.

    scorer = BundleScorer.load("/models", "sensors")          # the newest complete version
    scored = scorer.score(frame)                               # pandas DataFrame or Arrow table/batch
    scored[["score", "normalized_score", "is_anomaly", "group"]]

The columns are those of `DetectResult.to_frame()` (`oddity.client.detection`). Needs
onnxruntime (`pip install "oddity-client[batch]"`); pickles are never loaded, only the files
the manifest names, each checked against its sha256.

A batch is scored as the detector scores a request of the same rows, to the last bit. ONNX
Runtime gives some graphs' scores (a kNN's mean distance) a last-bit difference (about 1e-7)
by a row's position in a call, so rows batched otherwise than the detector's requests may
differ there (docs/batch-scoring.md).

Reason to change: how a version is scored outside the detector (inputs, outputs, checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from oddity.client.detection import PROBABILITY_PREFIX, TOP_FEATURES_COLUMN
from oddity.client.features import FeatureLayout
from oddity.common import bundle
from oddity.common.errors import InvalidArgument, NotFound
from oddity.common.scoring import Scores, SessionConfig, VersionScorer
from oddity.v1 import manifest_pb2

# (column, type) of the answers, in the order of DetectResult.to_frame(); types as Arrow/Spark name them.
ANOMALY_FIELDS = (
    ("score", "double"),
    ("normalized_score", "double"),
    ("is_anomaly", "boolean"),
    ("threshold", "double"),
    ("confidence", "double"),
    ("group", "string"),
    ("fallback", "boolean"),
)
CLASSIFIER_FIELDS = (("predicted_class", "string"), ("confidence", "double"), ("group", "string"))


def result_fields(manifest: manifest_pb2.ModelManifest, explain: bool = False) -> list[tuple[str, str]]:
    """The answer columns of a version and their types (`explain`: with top_features)."""
    if manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION:
        fields = [*CLASSIFIER_FIELDS, *((f"{PROBABILITY_PREFIX}{label}", "double") for label in manifest.class_labels)]
        if manifest.score_column:
            fields.append(("predicted_score", "double"))
        return fields
    return [*ANOMALY_FIELDS, *([(TOP_FEATURES_COLUMN, "string")] if explain else [])]


@dataclass(frozen=True)
class ModelVersion:
    """A verified version as bytes: what a scorer is built from, e.g. on a Spark executor that
    cannot read the repository (it travels with the job; nothing to re-verify)."""

    manifest_json: str
    onnx: dict[str, bytes]  # group name -> graph

    @classmethod
    def read(cls, repository: Path | str, model: str, version: int | None = None) -> ModelVersion:
        """The version's verified files: `version`, or the newest complete one."""
        return cls.of(_verified(Path(repository), model, version))

    @classmethod
    def of(cls, verified: bundle.VerifiedVersion) -> ModelVersion:
        return cls(bundle.manifest_to_json(verified.manifest), dict(verified.onnx))

    def verified(self) -> bundle.VerifiedVersion:
        manifest = bundle.parse_manifest(self.manifest_json)
        return bundle.VerifiedVersion(path=Path(), manifest=manifest, onnx=self.onnx)


def _verified(repository: Path, model: str, version: int | None) -> bundle.VerifiedVersion:
    if not bundle.is_valid_model_name(model):
        raise InvalidArgument(f"{model!r} is not a model name")
    if version is None:
        verified = bundle.newest_complete_version(repository, model)
        if verified is None:
            raise NotFound(f"model {model!r} has no complete version in {repository}")
        return verified
    if version <= 0:
        raise InvalidArgument(f"version must be positive, got {version}")
    if version not in bundle.list_versions(repository / model):
        raise NotFound(f"version {version} of model {model!r} is not in {repository}")
    try:
        return bundle.load_verified_version(repository, model, version)
    except bundle.BundleError as exc:
        raise NotFound(f"version {version} of model {model!r} in {repository} is not complete: {exc}") from None


class BundleScorer:
    """One published version, scored in this process (see the module docstring)."""

    def __init__(self, version: ModelVersion | bundle.VerifiedVersion, *, threads: int = 1) -> None:
        verified = version.verified() if isinstance(version, ModelVersion) else version
        self.manifest = verified.manifest
        self.layout = FeatureLayout.of(self.manifest)
        # Threads over which a batch's rows are split; the numbers do not depend on them.
        self._scorer = VersionScorer(verified, SessionConfig(intra_op_threads=threads, bulk_intra_op_threads=threads))

    @classmethod
    def load(cls, repository: Path | str, model: str, version: int | None = None, *, threads: int = 1) -> BundleScorer:
        """`version` of `model` in the model repository (None: the newest complete version)."""
        return cls(_verified(Path(repository), model, version), threads=threads)

    @property
    def model(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return int(self.manifest.version)

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def classifier(self) -> bool:
        return self.layout.classifier

    @property
    def explains(self) -> bool:
        """Whether the model names each row's top features (explain_top_k > 0 works)."""
        return not self.classifier and self._scorer.explains

    def score(
        self,
        table: pd.DataFrame | pa.Table | pa.RecordBatch,
        *,
        explain_top_k: int = 0,
        threshold_percentile: float | None = None,
    ) -> pd.DataFrame:
        """One row of answers per row of `table` (the columns of `result_fields`), indexed like
        a DataFrame input. The table holds the model's features by name (others are ignored)
        and, for a routed model, its routing column (without it the `all` group scores)."""
        frame = table.to_pandas() if isinstance(table, pa.Table | pa.RecordBatch) else table
        scores = self.score_rows(frame, explain_top_k=explain_top_k, threshold_percentile=threshold_percentile)
        return pd.DataFrame(self._columns(scores), index=frame.index)

    def score_rows(
        self, frame: pd.DataFrame, *, explain_top_k: int = 0, threshold_percentile: float | None = None
    ) -> Scores:
        """The detector's `Scores` for the rows of `frame` (checked as the detector checks them)."""
        if threshold_percentile is not None and not 0.0 < threshold_percentile < 100.0:
            raise InvalidArgument(f"threshold_percentile must lie in (0, 100), got {threshold_percentile}")
        if explain_top_k > self.layout.dimension:
            raise InvalidArgument(f"explain_top_k {explain_top_k} exceeds the model's {self.layout.dimension} features")
        split = self.layout.split(frame)
        rows = split.rows
        finite = np.isfinite(rows)
        if not finite.all():
            row, column = (int(i[0]) for i in np.nonzero(~finite))
            raise InvalidArgument(
                f"row {row}, feature {split.feature_names[column]!r} is {rows[row, column]} "
                "(NaN and Inf are not scored)"
            )
        return self._scorer.score(
            rows,
            split.routing_values or (),
            threshold_percentile=threshold_percentile,
            explain_top_k=explain_top_k,
            bulk=True,
        )

    def _columns(self, scores: Scores) -> dict[str, Any]:
        if scores.classes is not None and scores.probabilities is not None:
            labels = list(self.manifest.class_labels)
            columns: dict[str, Any] = {
                "predicted_class": [labels[i] for i in scores.classes.tolist()],
                "confidence": scores.confidences,
                "group": scores.groups,
            }
            for i, label in enumerate(labels):
                columns[f"{PROBABILITY_PREFIX}{label}"] = scores.probabilities[:, i].astype(np.float64)
            if scores.predicted_scores is not None:
                columns["predicted_score"] = scores.predicted_scores
            return columns
        columns = {
            "score": scores.scores,
            "normalized_score": scores.normalized,
            "is_anomaly": scores.is_anomaly,
            "threshold": scores.thresholds,
            "confidence": scores.confidences,
            "group": scores.groups,
            "fallback": scores.fallback,
        }
        if scores.explanations is not None:
            columns[TOP_FEATURES_COLUMN] = self._top_features(scores.explanations)
        return columns

    def _top_features(self, explanations: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[str]:
        """Per row, "name:share;..." as DetectResult.top_features writes it."""
        indices, _, shares = explanations
        names = list(self.manifest.feature_names) or [f"#{i}" for i in range(self.layout.dimension)]
        return [
            ";".join(f"{names[i]}:{share:.2f}" for i, share in zip(row, row_shares, strict=True))
            for row, row_shares in zip(indices.tolist(), shares.tolist(), strict=True)
        ]
