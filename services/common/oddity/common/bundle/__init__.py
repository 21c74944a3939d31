"""The model bundle: the contract between trainer and detector (`contract`) and the reader of
a model repository (`reader`). Writing versions is the trainer's alone
(`oddity.trainer.bundle_writer`).

    from oddity.common import bundle
    bundle.load_verified_version(repository, "sensors", 3)
    bundle.complete_versions(repository, "sensors")  # the one view of versions
"""

from oddity.common.bundle.contract import (
    ALL_GROUP,
    ANOMALY_DETECTION,
    CLASSIFICATION,
    CLASSIFIER_KINDS,
    DETECTOR_KINDS,
    FEATURE_ERRORS_OUTPUT,
    INPUT_NAME,
    IR_VERSION,
    KINDS,
    LABEL_OUTPUT,
    MANIFEST_FILE,
    ML_OPSET,
    OPSET,
    PROBABILITIES_OUTPUT,
    QUANTILE_LEVELS,
    SCORE_OUTPUT,
    TEMP_PREFIX,
    ModelKind,
    active_groups,
    is_valid_model_name,
    manifest_to_json,
    parse_manifest,
    validate_manifest,
)
from oddity.common.bundle.errors import BundleError
from oddity.common.bundle.reader import (
    VerifiedVersion,
    VersionCheck,
    check_versions,
    complete_versions,
    list_models,
    list_versions,
    load_verified_version,
    newest_complete_version,
    read_manifest,
    sha256_bytes,
    version_signature,
)

__all__ = [
    "ALL_GROUP",
    "ANOMALY_DETECTION",
    "CLASSIFICATION",
    "CLASSIFIER_KINDS",
    "DETECTOR_KINDS",
    "FEATURE_ERRORS_OUTPUT",
    "INPUT_NAME",
    "IR_VERSION",
    "KINDS",
    "LABEL_OUTPUT",
    "MANIFEST_FILE",
    "ML_OPSET",
    "OPSET",
    "PROBABILITIES_OUTPUT",
    "QUANTILE_LEVELS",
    "SCORE_OUTPUT",
    "TEMP_PREFIX",
    "BundleError",
    "ModelKind",
    "VerifiedVersion",
    "VersionCheck",
    "active_groups",
    "check_versions",
    "complete_versions",
    "is_valid_model_name",
    "list_models",
    "list_versions",
    "load_verified_version",
    "manifest_to_json",
    "newest_complete_version",
    "parse_manifest",
    "read_manifest",
    "sha256_bytes",
    "validate_manifest",
    "version_signature",
]
