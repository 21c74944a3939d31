import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelTask(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_TASK_UNSPECIFIED: _ClassVar[ModelTask]
    MODEL_TASK_ANOMALY_DETECTION: _ClassVar[ModelTask]
    MODEL_TASK_CLASSIFICATION: _ClassVar[ModelTask]

class GroupStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GROUP_STATUS_UNSPECIFIED: _ClassVar[GroupStatus]
    GROUP_STATUS_ACTIVE: _ClassVar[GroupStatus]
    GROUP_STATUS_INSUFFICIENT_DATA: _ClassVar[GroupStatus]
    GROUP_STATUS_FAILED: _ClassVar[GroupStatus]
MODEL_TASK_UNSPECIFIED: ModelTask
MODEL_TASK_ANOMALY_DETECTION: ModelTask
MODEL_TASK_CLASSIFICATION: ModelTask
GROUP_STATUS_UNSPECIFIED: GroupStatus
GROUP_STATUS_ACTIVE: GroupStatus
GROUP_STATUS_INSUFFICIENT_DATA: GroupStatus
GROUP_STATUS_FAILED: GroupStatus

class RoutingBounds(_message.Message):
    __slots__ = ("lower", "upper", "upper_inclusive")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    UPPER_INCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    upper_inclusive: bool
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ..., upper_inclusive: _Optional[bool] = ...) -> None: ...

class QuantileTable(_message.Message):
    __slots__ = ("probabilities", "values")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelGroup(_message.Message):
    __slots__ = ("name", "bounds", "onnx_file", "sha256", "threshold", "threshold_percentile", "quantiles", "train_samples", "validation_samples", "status", "status_message", "metrics", "calibration", "members", "evaluation")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    ONNX_FILE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    name: str
    bounds: RoutingBounds
    onnx_file: str
    sha256: str
    threshold: float
    threshold_percentile: float
    quantiles: QuantileTable
    train_samples: int
    validation_samples: int
    status: GroupStatus
    status_message: str
    metrics: _containers.ScalarMap[str, float]
    calibration: Calibration
    members: _containers.RepeatedCompositeFieldContainer[MemberEvidence]
    evaluation: ClassifierEvaluation
    def __init__(self, name: _Optional[str] = ..., bounds: _Optional[_Union[RoutingBounds, _Mapping]] = ..., onnx_file: _Optional[str] = ..., sha256: _Optional[str] = ..., threshold: _Optional[float] = ..., threshold_percentile: _Optional[float] = ..., quantiles: _Optional[_Union[QuantileTable, _Mapping]] = ..., train_samples: _Optional[int] = ..., validation_samples: _Optional[int] = ..., status: _Optional[_Union[GroupStatus, str]] = ..., status_message: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., members: _Optional[_Iterable[_Union[MemberEvidence, _Mapping]]] = ..., evaluation: _Optional[_Union[ClassifierEvaluation, _Mapping]] = ...) -> None: ...

class ClassifierEvaluation(_message.Message):
    __slots__ = ("rows", "accuracy", "balanced_accuracy", "macro_f1", "classes", "confusion_matrix", "ece_before_temperature", "ece_after_temperature", "temperature", "calibration_bins", "score_mae")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MACRO_F1_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_MATRIX_FIELD_NUMBER: _ClassVar[int]
    ECE_BEFORE_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    ECE_AFTER_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_BINS_FIELD_NUMBER: _ClassVar[int]
    SCORE_MAE_FIELD_NUMBER: _ClassVar[int]
    rows: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    classes: _containers.RepeatedCompositeFieldContainer[ClassEvaluation]
    confusion_matrix: _containers.RepeatedScalarFieldContainer[int]
    ece_before_temperature: float
    ece_after_temperature: float
    temperature: float
    calibration_bins: int
    score_mae: float
    def __init__(self, rows: _Optional[int] = ..., accuracy: _Optional[float] = ..., balanced_accuracy: _Optional[float] = ..., macro_f1: _Optional[float] = ..., classes: _Optional[_Iterable[_Union[ClassEvaluation, _Mapping]]] = ..., confusion_matrix: _Optional[_Iterable[int]] = ..., ece_before_temperature: _Optional[float] = ..., ece_after_temperature: _Optional[float] = ..., temperature: _Optional[float] = ..., calibration_bins: _Optional[int] = ..., score_mae: _Optional[float] = ...) -> None: ...

class ClassEvaluation(_message.Message):
    __slots__ = ("label", "precision", "recall", "f1", "support")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    label: str
    precision: float
    recall: float
    f1: float
    support: int
    def __init__(self, label: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("method", "folds", "rows", "expected_anomaly_rate", "cross_validated_anomaly_rate")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FOLDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ANOMALY_RATE_FIELD_NUMBER: _ClassVar[int]
    CROSS_VALIDATED_ANOMALY_RATE_FIELD_NUMBER: _ClassVar[int]
    method: str
    folds: int
    rows: int
    expected_anomaly_rate: float
    cross_validated_anomaly_rate: float
    def __init__(self, method: _Optional[str] = ..., folds: _Optional[int] = ..., rows: _Optional[int] = ..., expected_anomaly_rate: _Optional[float] = ..., cross_validated_anomaly_rate: _Optional[float] = ...) -> None: ...

class MemberEvidence(_message.Message):
    __slots__ = ("kind", "params_json", "weight", "synthetic_auc", "note")
    class SyntheticAucEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SYNTHETIC_AUC_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    params_json: str
    weight: float
    synthetic_auc: _containers.ScalarMap[str, float]
    note: str
    def __init__(self, kind: _Optional[str] = ..., params_json: _Optional[str] = ..., weight: _Optional[float] = ..., synthetic_auc: _Optional[_Mapping[str, float]] = ..., note: _Optional[str] = ...) -> None: ...

class EmbeddingSource(_message.Message):
    __slots__ = ("model", "model_id", "revision", "dimension", "modality", "extra_features")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FEATURES_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_id: str
    revision: str
    dimension: int
    modality: str
    extra_features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., model_id: _Optional[str] = ..., revision: _Optional[str] = ..., dimension: _Optional[int] = ..., modality: _Optional[str] = ..., extra_features: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelManifest(_message.Message):
    __slots__ = ("name", "version", "kind", "task", "feature_names", "input_dimension", "routing_key", "groups", "class_labels", "training_metrics", "data_fingerprint", "created_at", "dataset", "description", "embedding", "score_column")
    class TrainingMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIMENSION_FIELD_NUMBER: _ClassVar[int]
    ROUTING_KEY_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_METRICS_FIELD_NUMBER: _ClassVar[int]
    DATA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    SCORE_COLUMN_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    kind: str
    task: ModelTask
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    input_dimension: int
    routing_key: str
    groups: _containers.RepeatedCompositeFieldContainer[ModelGroup]
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    training_metrics: _containers.ScalarMap[str, float]
    data_fingerprint: str
    created_at: _timestamp_pb2.Timestamp
    dataset: str
    description: str
    embedding: EmbeddingSource
    score_column: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., kind: _Optional[str] = ..., task: _Optional[_Union[ModelTask, str]] = ..., feature_names: _Optional[_Iterable[str]] = ..., input_dimension: _Optional[int] = ..., routing_key: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[ModelGroup, _Mapping]]] = ..., class_labels: _Optional[_Iterable[str]] = ..., training_metrics: _Optional[_Mapping[str, float]] = ..., data_fingerprint: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataset: _Optional[str] = ..., description: _Optional[str] = ..., embedding: _Optional[_Union[EmbeddingSource, _Mapping]] = ..., score_column: _Optional[str] = ...) -> None: ...
