from oddity.v1 import manifest_pb2 as _manifest_pb2
from oddity.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectColumn(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DETECT_COLUMN_UNSPECIFIED: _ClassVar[DetectColumn]
    DETECT_COLUMN_SCORES: _ClassVar[DetectColumn]
    DETECT_COLUMN_NORMALIZED_SCORES: _ClassVar[DetectColumn]
    DETECT_COLUMN_IS_ANOMALY: _ClassVar[DetectColumn]
    DETECT_COLUMN_THRESHOLDS: _ClassVar[DetectColumn]
    DETECT_COLUMN_CONFIDENCES: _ClassVar[DetectColumn]
    DETECT_COLUMN_GROUPS: _ClassVar[DetectColumn]
    DETECT_COLUMN_FALLBACK: _ClassVar[DetectColumn]
DETECT_COLUMN_UNSPECIFIED: DetectColumn
DETECT_COLUMN_SCORES: DetectColumn
DETECT_COLUMN_NORMALIZED_SCORES: DetectColumn
DETECT_COLUMN_IS_ANOMALY: DetectColumn
DETECT_COLUMN_THRESHOLDS: DetectColumn
DETECT_COLUMN_CONFIDENCES: DetectColumn
DETECT_COLUMN_GROUPS: DetectColumn
DETECT_COLUMN_FALLBACK: DetectColumn

class ItemQuery(_message.Message):
    __slots__ = ("item_id", "vector", "image", "text")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    vector: _tensor_pb2.Tensor
    image: bytes
    text: str
    def __init__(self, item_id: _Optional[str] = ..., vector: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., image: _Optional[bytes] = ..., text: _Optional[str] = ...) -> None: ...

class MetadataFilter(_message.Message):
    __slots__ = ("column", "any_of", "min", "max")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    column: str
    any_of: _containers.RepeatedScalarFieldContainer[str]
    min: float
    max: float
    def __init__(self, column: _Optional[str] = ..., any_of: _Optional[_Iterable[str]] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class SimilarRequest(_message.Message):
    __slots__ = ("model", "version", "query", "top_k", "filters", "exclude_self", "with_tags")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SELF_FIELD_NUMBER: _ClassVar[int]
    WITH_TAGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    query: ItemQuery
    top_k: int
    filters: _containers.RepeatedCompositeFieldContainer[MetadataFilter]
    exclude_self: bool
    with_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., query: _Optional[_Union[ItemQuery, _Mapping]] = ..., top_k: _Optional[int] = ..., filters: _Optional[_Iterable[_Union[MetadataFilter, _Mapping]]] = ..., exclude_self: bool = ..., with_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarItem(_message.Message):
    __slots__ = ("id", "similarity", "metadata", "tags", "cluster", "text")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    id: str
    similarity: float
    metadata: _containers.ScalarMap[str, str]
    tags: _containers.RepeatedScalarFieldContainer[str]
    cluster: int
    text: str
    def __init__(self, id: _Optional[str] = ..., similarity: _Optional[float] = ..., metadata: _Optional[_Mapping[str, str]] = ..., tags: _Optional[_Iterable[str]] = ..., cluster: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class TagMatch(_message.Message):
    __slots__ = ("tag", "similarity")
    TAG_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    tag: str
    similarity: float
    def __init__(self, tag: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class SimilarResponse(_message.Message):
    __slots__ = ("model", "version", "items", "approximate", "matched_tags")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_FIELD_NUMBER: _ClassVar[int]
    MATCHED_TAGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    items: _containers.RepeatedCompositeFieldContainer[SimilarItem]
    approximate: bool
    matched_tags: _containers.RepeatedCompositeFieldContainer[TagMatch]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., items: _Optional[_Iterable[_Union[SimilarItem, _Mapping]]] = ..., approximate: bool = ..., matched_tags: _Optional[_Iterable[_Union[TagMatch, _Mapping]]] = ...) -> None: ...

class ClustersRequest(_message.Message):
    __slots__ = ("model", "version", "representatives", "assign")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVES_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    representatives: int
    assign: _containers.RepeatedCompositeFieldContainer[ItemQuery]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., representatives: _Optional[int] = ..., assign: _Optional[_Iterable[_Union[ItemQuery, _Mapping]]] = ...) -> None: ...

class ClusterInfo(_message.Message):
    __slots__ = ("id", "size", "representatives", "top_tags")
    ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REPRESENTATIVES_FIELD_NUMBER: _ClassVar[int]
    TOP_TAGS_FIELD_NUMBER: _ClassVar[int]
    id: int
    size: int
    representatives: _containers.RepeatedCompositeFieldContainer[SimilarItem]
    top_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[int] = ..., size: _Optional[int] = ..., representatives: _Optional[_Iterable[_Union[SimilarItem, _Mapping]]] = ..., top_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class ClusterAssignment(_message.Message):
    __slots__ = ("cluster", "is_new", "similarity")
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    IS_NEW_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    cluster: int
    is_new: bool
    similarity: float
    def __init__(self, cluster: _Optional[int] = ..., is_new: bool = ..., similarity: _Optional[float] = ...) -> None: ...

class ClustersResponse(_message.Message):
    __slots__ = ("model", "version", "clusters", "unclustered", "assignments")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLUSTERS_FIELD_NUMBER: _ClassVar[int]
    UNCLUSTERED_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    clusters: _containers.RepeatedCompositeFieldContainer[ClusterInfo]
    unclustered: int
    assignments: _containers.RepeatedCompositeFieldContainer[ClusterAssignment]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., clusters: _Optional[_Iterable[_Union[ClusterInfo, _Mapping]]] = ..., unclustered: _Optional[int] = ..., assignments: _Optional[_Iterable[_Union[ClusterAssignment, _Mapping]]] = ...) -> None: ...

class SuggestTagsRequest(_message.Message):
    __slots__ = ("model", "version", "query", "tags", "top_k", "neighbours")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    query: ItemQuery
    tags: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    neighbours: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., query: _Optional[_Union[ItemQuery, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., neighbours: _Optional[int] = ...) -> None: ...

class TagSuggestion(_message.Message):
    __slots__ = ("tag", "score", "from_neighbours", "from_cooccurrence")
    TAG_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FROM_NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    FROM_COOCCURRENCE_FIELD_NUMBER: _ClassVar[int]
    tag: str
    score: float
    from_neighbours: float
    from_cooccurrence: float
    def __init__(self, tag: _Optional[str] = ..., score: _Optional[float] = ..., from_neighbours: _Optional[float] = ..., from_cooccurrence: _Optional[float] = ...) -> None: ...

class SuggestTagsResponse(_message.Message):
    __slots__ = ("model", "version", "suggestions")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUGGESTIONS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    suggestions: _containers.RepeatedCompositeFieldContainer[TagSuggestion]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., suggestions: _Optional[_Iterable[_Union[TagSuggestion, _Mapping]]] = ...) -> None: ...

class DetectImagesRequest(_message.Message):
    __slots__ = ("model", "images", "texts", "routing_values", "extra_features", "threshold_percentile")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_VALUES_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FEATURES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    texts: _containers.RepeatedScalarFieldContainer[str]
    routing_values: _containers.RepeatedScalarFieldContainer[float]
    extra_features: _tensor_pb2.Tensor
    threshold_percentile: float
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., texts: _Optional[_Iterable[str]] = ..., routing_values: _Optional[_Iterable[float]] = ..., extra_features: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., threshold_percentile: _Optional[float] = ...) -> None: ...

class DetectImagesResponse(_message.Message):
    __slots__ = ("result", "embedder_model_id", "embedder_revision")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_REVISION_FIELD_NUMBER: _ClassVar[int]
    result: DetectResponse
    embedder_model_id: str
    embedder_revision: str
    def __init__(self, result: _Optional[_Union[DetectResponse, _Mapping]] = ..., embedder_model_id: _Optional[str] = ..., embedder_revision: _Optional[str] = ...) -> None: ...

class DetectRequest(_message.Message):
    __slots__ = ("model", "version", "rows", "feature_names", "routing_values", "threshold_percentile", "explain_top_k", "columns")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    ROUTING_VALUES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_TOP_K_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    rows: _tensor_pb2.Tensor
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    routing_values: _containers.RepeatedScalarFieldContainer[float]
    threshold_percentile: float
    explain_top_k: int
    columns: _containers.RepeatedScalarFieldContainer[DetectColumn]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., rows: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., feature_names: _Optional[_Iterable[str]] = ..., routing_values: _Optional[_Iterable[float]] = ..., threshold_percentile: _Optional[float] = ..., explain_top_k: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[DetectColumn, str]]] = ...) -> None: ...

class FeatureContribution(_message.Message):
    __slots__ = ("name", "index", "contribution", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    contribution: float
    error: float
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., contribution: _Optional[float] = ..., error: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureContribution]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureContribution, _Mapping]]] = ...) -> None: ...

class DetectResponse(_message.Message):
    __slots__ = ("model", "model_version", "kind", "scores", "normalized_scores", "is_anomaly", "thresholds", "confidences", "groups", "fallback", "explanations", "predicted_classes", "probabilities", "class_labels", "predicted_scores", "group_names", "row_groups")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_SCORES_FIELD_NUMBER: _ClassVar[int]
    IS_ANOMALY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCES_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASSES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_SCORES_FIELD_NUMBER: _ClassVar[int]
    GROUP_NAMES_FIELD_NUMBER: _ClassVar[int]
    ROW_GROUPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    kind: str
    scores: _containers.RepeatedScalarFieldContainer[float]
    normalized_scores: _containers.RepeatedScalarFieldContainer[float]
    is_anomaly: _containers.RepeatedScalarFieldContainer[bool]
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    confidences: _containers.RepeatedScalarFieldContainer[float]
    groups: _containers.RepeatedScalarFieldContainer[str]
    fallback: _containers.RepeatedScalarFieldContainer[bool]
    explanations: _containers.RepeatedCompositeFieldContainer[Explanation]
    predicted_classes: _containers.RepeatedScalarFieldContainer[str]
    probabilities: _tensor_pb2.Tensor
    class_labels: _containers.RepeatedScalarFieldContainer[str]
    predicted_scores: _containers.RepeatedScalarFieldContainer[float]
    group_names: _containers.RepeatedScalarFieldContainer[str]
    row_groups: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., kind: _Optional[str] = ..., scores: _Optional[_Iterable[float]] = ..., normalized_scores: _Optional[_Iterable[float]] = ..., is_anomaly: _Optional[_Iterable[bool]] = ..., thresholds: _Optional[_Iterable[float]] = ..., confidences: _Optional[_Iterable[float]] = ..., groups: _Optional[_Iterable[str]] = ..., fallback: _Optional[_Iterable[bool]] = ..., explanations: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ..., predicted_classes: _Optional[_Iterable[str]] = ..., probabilities: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., class_labels: _Optional[_Iterable[str]] = ..., predicted_scores: _Optional[_Iterable[float]] = ..., group_names: _Optional[_Iterable[str]] = ..., row_groups: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelStatus(_message.Message):
    __slots__ = ("name", "serving_version", "available_versions", "pinned_version", "unloaded", "kind", "last_error", "rejected_versions")
    class RejectedVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVING_VERSION_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNLOADED_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    REJECTED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    serving_version: int
    available_versions: _containers.RepeatedScalarFieldContainer[int]
    pinned_version: int
    unloaded: bool
    kind: str
    last_error: str
    rejected_versions: _containers.ScalarMap[int, str]
    def __init__(self, name: _Optional[str] = ..., serving_version: _Optional[int] = ..., available_versions: _Optional[_Iterable[int]] = ..., pinned_version: _Optional[int] = ..., unloaded: bool = ..., kind: _Optional[str] = ..., last_error: _Optional[str] = ..., rejected_versions: _Optional[_Mapping[int, str]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelStatus]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelStatus, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("status", "manifest")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    manifest: _manifest_pb2.ModelManifest
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ..., manifest: _Optional[_Union[_manifest_pb2.ModelManifest, _Mapping]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    def __init__(self, status: _Optional[_Union[ModelStatus, _Mapping]] = ...) -> None: ...
