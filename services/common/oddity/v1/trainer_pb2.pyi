from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from oddity.v1 import manifest_pb2 as _manifest_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_SKIPPED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_SKIPPED: JobState

class Job(_message.Message):
    __slots__ = ("id", "dataset", "state", "phase", "epoch", "total_epochs", "loss", "group", "message", "trigger", "created_at", "started_at", "finished_at", "published_version", "metrics", "train_loss", "validation_loss", "epoch_metrics", "resumed_from_epoch", "progress_unit")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class EpochMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_METRICS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_UNIT_FIELD_NUMBER: _ClassVar[int]
    id: str
    dataset: str
    state: JobState
    phase: str
    epoch: int
    total_epochs: int
    loss: float
    group: str
    message: str
    trigger: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    published_version: int
    metrics: _containers.ScalarMap[str, float]
    train_loss: float
    validation_loss: float
    epoch_metrics: _containers.ScalarMap[str, float]
    resumed_from_epoch: int
    progress_unit: str
    def __init__(self, id: _Optional[str] = ..., dataset: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., phase: _Optional[str] = ..., epoch: _Optional[int] = ..., total_epochs: _Optional[int] = ..., loss: _Optional[float] = ..., group: _Optional[str] = ..., message: _Optional[str] = ..., trigger: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., published_version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., train_loss: _Optional[float] = ..., validation_loss: _Optional[float] = ..., epoch_metrics: _Optional[_Mapping[str, float]] = ..., resumed_from_epoch: _Optional[int] = ..., progress_unit: _Optional[str] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("dataset", "force", "data_path", "model_kind")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    DATA_PATH_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    force: bool
    data_path: str
    model_kind: str
    def __init__(self, dataset: _Optional[str] = ..., force: bool = ..., data_path: _Optional[str] = ..., model_kind: _Optional[str] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class AutoTraining(_message.Message):
    __slots__ = ("policy", "enabled", "interval_hours", "debounce_seconds", "min_samples")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_HOURS_FIELD_NUMBER: _ClassVar[int]
    DEBOUNCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    policy: str
    enabled: bool
    interval_hours: float
    debounce_seconds: float
    min_samples: int
    def __init__(self, policy: _Optional[str] = ..., enabled: bool = ..., interval_hours: _Optional[float] = ..., debounce_seconds: _Optional[float] = ..., min_samples: _Optional[int] = ...) -> None: ...

class DatasetStatus(_message.Message):
    __slots__ = ("dataset", "valid", "error", "model", "kind", "training_in_progress", "last_training_time", "auto_training", "samples", "group_samples", "last_error", "live_version", "data_fingerprint", "live_groups", "pinned_version", "pinned_until", "threshold_override", "consecutive_failures", "next_retry_time", "left_out_columns", "left_out_column_count")
    class GroupSamplesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TRAINING_IN_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_TRAINING_TIME_FIELD_NUMBER: _ClassVar[int]
    AUTO_TRAINING_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    GROUP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    LIVE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    PINNED_UNTIL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    CONSECUTIVE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    NEXT_RETRY_TIME_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_COLUMN_COUNT_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    valid: bool
    error: str
    model: str
    kind: str
    training_in_progress: bool
    last_training_time: _timestamp_pb2.Timestamp
    auto_training: AutoTraining
    samples: int
    group_samples: _containers.ScalarMap[str, int]
    last_error: str
    live_version: int
    data_fingerprint: str
    live_groups: _containers.RepeatedCompositeFieldContainer[GroupEvidence]
    pinned_version: int
    pinned_until: str
    threshold_override: float
    consecutive_failures: int
    next_retry_time: _timestamp_pb2.Timestamp
    left_out_columns: _containers.RepeatedScalarFieldContainer[str]
    left_out_column_count: int
    def __init__(self, dataset: _Optional[str] = ..., valid: bool = ..., error: _Optional[str] = ..., model: _Optional[str] = ..., kind: _Optional[str] = ..., training_in_progress: bool = ..., last_training_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., auto_training: _Optional[_Union[AutoTraining, _Mapping]] = ..., samples: _Optional[int] = ..., group_samples: _Optional[_Mapping[str, int]] = ..., last_error: _Optional[str] = ..., live_version: _Optional[int] = ..., data_fingerprint: _Optional[str] = ..., live_groups: _Optional[_Iterable[_Union[GroupEvidence, _Mapping]]] = ..., pinned_version: _Optional[int] = ..., pinned_until: _Optional[str] = ..., threshold_override: _Optional[float] = ..., consecutive_failures: _Optional[int] = ..., next_retry_time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., left_out_columns: _Optional[_Iterable[str]] = ..., left_out_column_count: _Optional[int] = ...) -> None: ...

class GroupEvidence(_message.Message):
    __slots__ = ("group", "status", "train_samples", "threshold", "threshold_percentile", "calibration", "members", "evaluation", "metrics", "selection")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    GROUP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    group: str
    status: _manifest_pb2.GroupStatus
    train_samples: int
    threshold: float
    threshold_percentile: float
    calibration: _manifest_pb2.Calibration
    members: _containers.RepeatedCompositeFieldContainer[_manifest_pb2.MemberEvidence]
    evaluation: _manifest_pb2.ClassifierEvaluation
    metrics: _containers.ScalarMap[str, float]
    selection: str
    def __init__(self, group: _Optional[str] = ..., status: _Optional[_Union[_manifest_pb2.GroupStatus, str]] = ..., train_samples: _Optional[int] = ..., threshold: _Optional[float] = ..., threshold_percentile: _Optional[float] = ..., calibration: _Optional[_Union[_manifest_pb2.Calibration, _Mapping]] = ..., members: _Optional[_Iterable[_Union[_manifest_pb2.MemberEvidence, _Mapping]]] = ..., evaluation: _Optional[_Union[_manifest_pb2.ClassifierEvaluation, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., selection: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetStatus]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetStatus, _Mapping]]] = ...) -> None: ...

class HistoryEvent(_message.Message):
    __slots__ = ("timestamp", "event_type", "dataset", "message", "details", "details_json")
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    timestamp: _timestamp_pb2.Timestamp
    event_type: str
    dataset: str
    message: str
    details: _struct_pb2.Struct
    details_json: str
    def __init__(self, timestamp: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., event_type: _Optional[str] = ..., dataset: _Optional[str] = ..., message: _Optional[str] = ..., details: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., details_json: _Optional[str] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("dataset", "event_types", "limit")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    event_types: _containers.RepeatedScalarFieldContainer[str]
    limit: int
    def __init__(self, dataset: _Optional[str] = ..., event_types: _Optional[_Iterable[str]] = ..., limit: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[HistoryEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[HistoryEvent, _Mapping]]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("dataset", "version")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: int
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("version", "restored_from", "next")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FROM_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    version: int
    restored_from: int
    next: str
    def __init__(self, version: _Optional[int] = ..., restored_from: _Optional[int] = ..., next: _Optional[str] = ...) -> None: ...

class SetThresholdRequest(_message.Message):
    __slots__ = ("dataset", "percentile")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PERCENTILE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    percentile: float
    def __init__(self, dataset: _Optional[str] = ..., percentile: _Optional[float] = ...) -> None: ...

class SetThresholdResponse(_message.Message):
    __slots__ = ("version", "next")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    version: int
    next: str
    def __init__(self, version: _Optional[int] = ..., next: _Optional[str] = ...) -> None: ...
