"""The model-bundle contract between trainer and detector: what a version folder holds, what
its manifest must say, which model kinds exist and what their ONNX graphs look like.

A model repository holds `<repository>/<model>/<version>/manifest.json` plus one ONNX
file per active group, and the files of the similarity index when the manifest names one
(`index_contract.py`). Versions are positive integers (the folder name). A version
counts only when complete: the manifest parses, agrees with its folder, and every
active group's ONNX file (and every index file) has the sha256 the manifest names. Publishers write into a
hidden temporary folder and rename it into place, so readers never see a half-written
version under an integer name.

ONNX graph interface (all float32):
  input            "input"           [N, D] raw features (any scaling is inside the graph)
  anomaly models   "score"           [N]    higher = more anomalous
                   "feature_errors"  [N, D] optional per-feature errors, for explanations
  classifiers      "label"           [N]    int64 class index
                   "probabilities"   [N, C] in the order of manifest.class_labels (calibrated:
                                            any temperature is inside the graph)
                   "predicted_score" [N]    with a regression head (manifest.score_column)

Reason to change: the contract itself (a new kind, a new graph output, a new manifest rule).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from oddity.common.bundle.errors import BundleError
from oddity.common.bundle.index_contract import validate_index
from oddity.v1 import manifest_pb2

MANIFEST_FILE = "manifest.json"
ALL_GROUP = "all"
TEMP_PREFIX = ".tmp-"

# -- the ONNX graph interface -------------------------------------------------------------
INPUT_NAME = "input"
SCORE_OUTPUT = "score"
FEATURE_ERRORS_OUTPUT = "feature_errors"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
PREDICTED_SCORE_OUTPUT = "predicted_score"
OPSET = 17
ML_OPSET = 3
# What onnxruntime >= 1.16 reads; onnx 1.23 would write 14, which onnxruntime 1.31 refuses.
IR_VERSION = 8

# Levels of the quantile table of held-out normal scores in every anomaly group: normalized
# scores and request-time percentiles are read off it.
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 1001)

ANOMALY_DETECTION = manifest_pb2.MODEL_TASK_ANOMALY_DETECTION
CLASSIFICATION = manifest_pb2.MODEL_TASK_CLASSIFICATION


@dataclass(frozen=True)
class ModelKind:
    """One model kind: what task it serves, whether its graph explains scores per feature and
    whether it can carry a regression head."""

    name: str
    task: int  # manifest_pb2.ModelTask
    # The graph may output per-feature errors (ensembles: when a member does).
    feature_errors: bool = False
    # A classifier that can also predict a continuous value (the spec's score_column).
    score_head: bool = False

    @property
    def is_classifier(self) -> bool:
        return self.task == CLASSIFICATION


# The built-in model kinds, as the detector reads a manifest's kind. The trainer's learner classes
# declare the same (a test keeps them equal) and may add kinds: the detector serves those by task.
KINDS: dict[str, ModelKind] = {
    k.name: k
    for k in (
        # The default: weighs candidate detectors on synthetic anomalies and combines them.
        ModelKind("auto", ANOMALY_DETECTION, feature_errors=True),
        ModelKind("autoencoder", ANOMALY_DETECTION, feature_errors=True),
        ModelKind("knn", ANOMALY_DETECTION, feature_errors=True),
        # Distance to the normal rows' mean under a shrinkage covariance; PCA reconstruction error.
        ModelKind("mahalanobis", ANOMALY_DETECTION, feature_errors=True),
        ModelKind("pca", ANOMALY_DETECTION, feature_errors=True),
        ModelKind("ensemble", ANOMALY_DETECTION, feature_errors=True),
        ModelKind("isolation_forest", ANOMALY_DETECTION),
        ModelKind("one_class_svm", ANOMALY_DETECTION),
        ModelKind("random_forest", CLASSIFICATION),
        ModelKind("svm", CLASSIFICATION),
        ModelKind("logistic", CLASSIFICATION),
        # A torch MLP on tables or embeddings: class imbalance, temperature scaling, checkpoints.
        ModelKind("mlp_classifier", CLASSIFICATION, score_head=True),
    )
}
DETECTOR_KINDS = tuple(k for k, v in KINDS.items() if not v.is_classifier)
CLASSIFIER_KINDS = tuple(k for k, v in KINDS.items() if v.is_classifier)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def is_valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name))


def parse_manifest(text: str | bytes, *, source: str = MANIFEST_FILE) -> manifest_pb2.ModelManifest:
    try:
        # Unknown fields are ignored so that an older detector can read a newer trainer's manifest.
        return json_format.Parse(text, manifest_pb2.ModelManifest(), ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{source} is not a valid manifest: {exc}") from exc


def manifest_to_json(manifest: manifest_pb2.ModelManifest) -> str:
    return json_format.MessageToJson(manifest, indent=2, sort_keys=True) + "\n"


def active_groups(manifest: manifest_pb2.ModelManifest) -> list[manifest_pb2.ModelGroup]:
    return [g for g in manifest.groups if g.status == manifest_pb2.GROUP_STATUS_ACTIVE]


def validate_manifest(manifest: manifest_pb2.ModelManifest, *, name: str, version: int) -> None:
    """Raise BundleError when the manifest contradicts its folder or itself."""
    if manifest.name != name:
        raise BundleError(f"manifest names model {manifest.name!r}, folder is {name!r}")
    if manifest.version != version:
        raise BundleError(f"manifest says version {manifest.version}, folder is {version}")
    if manifest.task == manifest_pb2.MODEL_TASK_UNSPECIFIED:
        raise BundleError("manifest has no task")
    kind = KINDS.get(manifest.kind)
    # Unknown kinds are served by their task (a newer trainer may know more kinds).
    if kind is not None and kind.task != manifest.task:
        raise BundleError(f"kind {manifest.kind!r} is not a {manifest_pb2.ModelTask.Name(manifest.task)} model")
    if manifest.input_dimension <= 0:
        raise BundleError(f"input_dimension must be positive, got {manifest.input_dimension}")
    if manifest.feature_names and len(manifest.feature_names) != manifest.input_dimension:
        raise BundleError(f"{len(manifest.feature_names)} feature_names for input_dimension {manifest.input_dimension}")
    if len(set(manifest.feature_names)) != len(manifest.feature_names):
        raise BundleError("feature_names has duplicates")
    if manifest.task == CLASSIFICATION and not manifest.class_labels:
        raise BundleError("a classification manifest needs class_labels")
    if manifest.score_column and manifest.task != CLASSIFICATION:
        raise BundleError("score_column (a regression head) belongs to classifiers only")
    names = [g.name for g in manifest.groups]
    if len(set(names)) != len(names):
        raise BundleError("group names are not unique")
    if not active_groups(manifest):
        raise BundleError("no active group")
    if not manifest.routing_key and len(manifest.groups) != 1:
        raise BundleError(f"{len(manifest.groups)} groups but no routing_key to choose between them")
    for group in manifest.groups:
        _validate_group(manifest, group)
    validate_index(manifest)


def _validate_group(manifest: manifest_pb2.ModelManifest, group: manifest_pb2.ModelGroup) -> None:
    where = f"group {group.name!r}"
    if not _GROUP_NAME.match(group.name):
        raise BundleError(f"{where}: invalid group name")
    bounded = group.HasField("bounds") and (group.bounds.HasField("lower") or group.bounds.HasField("upper"))
    if group.name == ALL_GROUP and bounded:
        raise BundleError(f"{where}: the catch-all group takes no bounds")
    if group.name != ALL_GROUP and manifest.routing_key and not bounded:
        raise BundleError(f"{where}: needs bounds on {manifest.routing_key!r}")
    both_ends = bounded and group.bounds.HasField("lower") and group.bounds.HasField("upper")
    if both_ends and group.bounds.lower >= group.bounds.upper:
        raise BundleError(f"{where}: lower bound {group.bounds.lower} is not below upper {group.bounds.upper}")
    if group.status != manifest_pb2.GROUP_STATUS_ACTIVE:
        return
    file_name = group.onnx_file
    if not file_name or Path(file_name).name != file_name or file_name.startswith("."):
        raise BundleError(f"{where}: onnx_file {file_name!r} must be a plain file name")
    if not re.fullmatch(r"[0-9a-f]{64}", group.sha256):
        raise BundleError(f"{where}: sha256 must be 64 lower-case hex digits")
    if manifest.task == ANOMALY_DETECTION:
        q = group.quantiles
        if len(q.probabilities) < 2 or len(q.probabilities) != len(q.values):
            raise BundleError(f"{where}: the quantile table needs >= 2 matching probabilities and values")
        probs, values = list(q.probabilities), list(q.values)
        if any(not 0.0 <= p <= 1.0 for p in probs) or any(b <= a for a, b in pairwise(probs)):
            raise BundleError(f"{where}: quantile probabilities must rise strictly within [0, 1]")
        if any(b < a for a, b in pairwise(values)):
            raise BundleError(f"{where}: quantile values must not fall")
        if not 0.0 < group.threshold_percentile < 100.0:
            raise BundleError(f"{where}: threshold_percentile must lie in (0, 100)")
