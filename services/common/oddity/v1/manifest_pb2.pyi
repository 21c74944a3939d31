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
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ..., upper_inclusive: bool = ...) -> None: ...

class QuantileTable(_message.Message):
    __slots__ = ("probabilities", "values")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelGroup(_message.Message):
    __slots__ = ("name", "bounds", "onnx_file", "sha256", "threshold", "threshold_percentile", "quantiles", "train_samples", "validation_samples", "status", "status_message", "metrics", "calibration", "members", "evaluation", "selection", "scratch_bytes_per_row")
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
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    SCRATCH_BYTES_PER_ROW_FIELD_NUMBER: _ClassVar[int]
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
    selection: str
    scratch_bytes_per_row: int
    def __init__(self, name: _Optional[str] = ..., bounds: _Optional[_Union[RoutingBounds, _Mapping]] = ..., onnx_file: _Optional[str] = ..., sha256: _Optional[str] = ..., threshold: _Optional[float] = ..., threshold_percentile: _Optional[float] = ..., quantiles: _Optional[_Union[QuantileTable, _Mapping]] = ..., train_samples: _Optional[int] = ..., validation_samples: _Optional[int] = ..., status: _Optional[_Union[GroupStatus, str]] = ..., status_message: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., members: _Optional[_Iterable[_Union[MemberEvidence, _Mapping]]] = ..., evaluation: _Optional[_Union[ClassifierEvaluation, _Mapping]] = ..., selection: _Optional[str] = ..., scratch_bytes_per_row: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("name", "version", "kind", "task", "feature_names", "input_dimension", "routing_key", "groups", "class_labels", "training_metrics", "data_fingerprint", "created_at", "dataset", "description", "embedding", "score_column", "similarity")
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
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
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
    similarity: SimilarityIndex
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., kind: _Optional[str] = ..., task: _Optional[_Union[ModelTask, str]] = ..., feature_names: _Optional[_Iterable[str]] = ..., input_dimension: _Optional[int] = ..., routing_key: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[ModelGroup, _Mapping]]] = ..., class_labels: _Optional[_Iterable[str]] = ..., training_metrics: _Optional[_Mapping[str, float]] = ..., data_fingerprint: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., dataset: _Optional[str] = ..., description: _Optional[str] = ..., embedding: _Optional[_Union[EmbeddingSource, _Mapping]] = ..., score_column: _Optional[str] = ..., similarity: _Optional[_Union[SimilarityIndex, _Mapping]] = ...) -> None: ...

class BundleFile(_message.Message):
    __slots__ = ("file", "sha256")
    FILE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    file: str
    sha256: str
    def __init__(self, file: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class SimilarityIndex(_message.Message):
    __slots__ = ("space", "items", "dimension", "center", "scale", "vectors", "approximate", "hnsw", "catalog", "text_vectors", "text_model", "clusters", "tags")
    SPACE_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_FIELD_NUMBER: _ClassVar[int]
    HNSW_FIELD_NUMBER: _ClassVar[int]
    CATALOG_FIELD_NUMBER: _ClassVar[int]
    TEXT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    space: str
    items: int
    dimension: int
    center: _containers.RepeatedScalarFieldContainer[float]
    scale: _containers.RepeatedScalarFieldContainer[float]
    vectors: BundleFile
    approximate: BundleFile
    hnsw: HnswParameters
    catalog: BundleFile
    text_vectors: BundleFile
    text_model: EmbeddingSource
    clusters: int
    tags: int
    def __init__(self, space: _Optional[str] = ..., items: _Optional[int] = ..., dimension: _Optional[int] = ..., center: _Optional[_Iterable[float]] = ..., scale: _Optional[_Iterable[float]] = ..., vectors: _Optional[_Union[BundleFile, _Mapping]] = ..., approximate: _Optional[_Union[BundleFile, _Mapping]] = ..., hnsw: _Optional[_Union[HnswParameters, _Mapping]] = ..., catalog: _Optional[_Union[BundleFile, _Mapping]] = ..., text_vectors: _Optional[_Union[BundleFile, _Mapping]] = ..., text_model: _Optional[_Union[EmbeddingSource, _Mapping]] = ..., clusters: _Optional[int] = ..., tags: _Optional[int] = ...) -> None: ...

class HnswParameters(_message.Message):
    __slots__ = ("m", "ef_construction", "ef_search")
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    m: int
    ef_construction: int
    ef_search: int
    def __init__(self, m: _Optional[int] = ..., ef_construction: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class ItemCatalog(_message.Message):
    __slots__ = ("ids", "metadata", "tag_names", "tag_counts", "item_tags", "tag_pairs", "item_clusters", "clusters", "captions", "texts")
    IDS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TAG_NAMES_FIELD_NUMBER: _ClassVar[int]
    TAG_COUNTS_FIELD_NUMBER: _ClassVar[int]
    ITEM_TAGS_FIELD_NUMBER: _ClassVar[int]
    TAG_PAIRS_FIELD_NUMBER: _ClassVar[int]
    ITEM_CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    CAPTIONS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    metadata: _containers.RepeatedCompositeFieldContainer[MetadataColumn]
    tag_names: _containers.RepeatedScalarFieldContainer[str]
    tag_counts: _containers.RepeatedScalarFieldContainer[int]
    item_tags: _containers.RepeatedCompositeFieldContainer[TagSet]
    tag_pairs: _containers.RepeatedCompositeFieldContainer[TagPair]
    item_clusters: _containers.RepeatedScalarFieldContainer[int]
    clusters: _containers.RepeatedCompositeFieldContainer[ItemCluster]
    captions: _containers.RepeatedScalarFieldContainer[str]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., metadata: _Optional[_Iterable[_Union[MetadataColumn, _Mapping]]] = ..., tag_names: _Optional[_Iterable[str]] = ..., tag_counts: _Optional[_Iterable[int]] = ..., item_tags: _Optional[_Iterable[_Union[TagSet, _Mapping]]] = ..., tag_pairs: _Optional[_Iterable[_Union[TagPair, _Mapping]]] = ..., item_clusters: _Optional[_Iterable[int]] = ..., clusters: _Optional[_Iterable[_Union[ItemCluster, _Mapping]]] = ..., captions: _Optional[_Iterable[str]] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class MetadataColumn(_message.Message):
    __slots__ = ("name", "text", "numbers", "numeric")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    name: str
    text: _containers.RepeatedScalarFieldContainer[str]
    numbers: _containers.RepeatedScalarFieldContainer[float]
    numeric: bool
    def __init__(self, name: _Optional[str] = ..., text: _Optional[_Iterable[str]] = ..., numbers: _Optional[_Iterable[float]] = ..., numeric: bool = ...) -> None: ...

class TagSet(_message.Message):
    __slots__ = ("tags",)
    TAGS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tags: _Optional[_Iterable[int]] = ...) -> None: ...

class TagPair(_message.Message):
    __slots__ = ("a", "b", "count", "lift", "pmi")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    LIFT_FIELD_NUMBER: _ClassVar[int]
    PMI_FIELD_NUMBER: _ClassVar[int]
    a: int
    b: int
    count: int
    lift: float
    pmi: float
    def __init__(self, a: _Optional[int] = ..., b: _Optional[int] = ..., count: _Optional[int] = ..., lift: _Optional[float] = ..., pmi: _Optional[float] = ...) -> None: ...

class ItemCluster(_message.Message):
    __slots__ = ("id", "size", "representatives", "centroid", "radius", "top_tags")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVES_FIELD_NUMBER: _ClassVar[int]
    CENTROID_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    TOP_TAGS_FIELD_NUMBER: _ClassVar[int]
    id: int
    size: int
    representatives: _containers.RepeatedScalarFieldContainer[int]
    centroid: _containers.RepeatedScalarFieldContainer[float]
    radius: float
    top_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[int] = ..., size: _Optional[int] = ..., representatives: _Optional[_Iterable[int]] = ..., centroid: _Optional[_Iterable[float]] = ..., radius: _Optional[float] = ..., top_tags: _Optional[_Iterable[str]] = ...) -> None: ...
