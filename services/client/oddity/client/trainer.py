"""Synchronous client of the trainer: start and follow training jobs, read datasets' status and
the history, roll back, move thresholds.

    with TrainerClient("127.0.0.1:50053") as trainer:
        job = trainer.train("sensors", force=True)
        for update in trainer.watch_job(job.id):
            print(update.phase, update.epoch, update.total_epochs)

Rollback and SetThreshold act on a dataset; its model carries the dataset's name unless the
dataset's spec names another (`dataset_of(model)` finds the dataset of a model).

Reason to change: the Trainer API, as SDK callers see it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format

from oddity.client.connection import ServiceClient
from oddity.client.messages import from_message, timestamp
from oddity.common.errors import NotFound
from oddity.v1 import trainer_pb2, trainer_pb2_grpc

FINISHED_STATES = frozenset({"succeeded", "failed", "skipped"})


def to_json_value(value: Any) -> Any:
    """Dataclass fields made JSON-ready: datetimes as ISO 8601, tuples as lists, dict keys as text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value


@dataclass(frozen=True)
class Job:
    id: str
    dataset: str
    state: str  # queued, running, succeeded, failed, skipped
    #: loading, embedding, training, validating, exporting, publishing, done.
    phase: str
    epoch: int
    total_epochs: int
    loss: float
    group: str  # the group being trained
    message: str  # why it failed or was skipped
    trigger: str  # api, file_change, interval, startup
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    published_version: int  # 0: none
    metrics: dict[str, float]
    train_loss: float = 0.0  # the last epoch's (0: not an epoch-based model, or not yet)
    validation_loss: float = 0.0
    epoch_metrics: dict[str, float] = field(default_factory=dict)  # e.g. validation balanced accuracy
    resumed_from_epoch: int = 0  # > 0: continued from this checkpoint after a restart
    #: What epoch and total_epochs count: "epoch" (loss is the epoch's), "member" (ensembles and
    #: auto) or "step" (kinds fitted in one go: no loss); "" before training reports.
    progress_unit: str = ""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def counts_epochs(self) -> bool:
        """epoch, total_epochs and loss are a training's epochs and their loss (a trainer that
        does not say what it counts counted epochs)."""
        return self.progress_unit in ("", "epoch")

    @classmethod
    def from_proto(cls, job: trainer_pb2.Job) -> Job:
        return from_message(cls, job)

    def to_dict(self) -> dict[str, Any]:
        return to_json_value(asdict(self))


@dataclass(frozen=True)
class GroupEvidence:
    """One group of a dataset's live version."""

    group: str
    status: str  # active, insufficient_data, failed
    train_samples: int
    threshold: float
    threshold_percentile: float
    calibration: dict[str, Any]  # method, folds, rows, expected and cross-validated anomaly rates
    members: list[dict[str, Any]]  # auto and ensembles: kind, params_json, weight, note
    #: Classifiers, on held-out rows: accuracy, balanced_accuracy, macro_f1, classes (precision,
    #: recall), confusion_matrix, ece_before/after_temperature, temperature, score_mae; else {}.
    evaluation: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # validation figures, as the manifest's group has them
    #: Kinds that choose a detector (auto): what they chose and why, in one line; "" for the others.
    selection: str = ""

    @classmethod
    def from_proto(cls, group: trainer_pb2.GroupEvidence) -> GroupEvidence:
        return from_message(
            cls,
            group,
            calibration=json_format.MessageToDict(group.calibration, preserving_proto_field_name=True),
            members=[json_format.MessageToDict(m, preserving_proto_field_name=True) for m in group.members],
            evaluation=_evaluation(group.evaluation) if group.HasField("evaluation") else {},
        )


def _evaluation(evaluation: Any) -> dict[str, Any]:
    """A classifier's held-out figures as plain values (the JSON mapping writes int64 as text)."""
    figures = json_format.MessageToDict(evaluation, preserving_proto_field_name=True)
    figures["rows"] = int(figures.get("rows", 0))
    figures["confusion_matrix"] = [int(v) for v in figures.get("confusion_matrix", ())]
    return figures


@dataclass(frozen=True)
class DatasetStatus:
    dataset: str
    valid: bool
    error: str  # why dataset.yaml is invalid
    model: str
    kind: str
    training_in_progress: bool
    last_training_time: datetime | None
    # Automatic training (the spec's retrain: section), flattened from the message's auto_training.
    policy: str  # on_change, interval or manual
    auto_training: bool  # enabled
    interval_hours: float
    debounce_seconds: float
    min_samples: int
    samples: int
    group_samples: dict[str, int]
    last_error: str
    live_version: int  # 0: none
    data_fingerprint: str
    pinned_version: int  # a rollback holding this version; 0: none
    pinned_until: str
    threshold_override: float  # 0: the spec's threshold_percentile
    consecutive_failures: int
    next_retry_time: datetime | None
    live_groups: tuple[GroupEvidence, ...]
    #: The last load's columns left out of the features because they hold no numbers (the
    #: first 20), and how many there were (features not listed in the spec).
    left_out_columns: tuple[str, ...] = ()
    left_out_column_count: int = 0

    @classmethod
    def from_proto(cls, status: trainer_pb2.DatasetStatus) -> DatasetStatus:
        auto = status.auto_training
        return from_message(
            cls,
            status,
            policy=auto.policy,
            auto_training=auto.enabled,
            interval_hours=auto.interval_hours,
            debounce_seconds=auto.debounce_seconds,
            min_samples=auto.min_samples,
            live_groups=tuple(GroupEvidence.from_proto(g) for g in status.live_groups),
        )

    def to_dict(self) -> dict[str, Any]:
        return to_json_value(asdict(self))


@dataclass(frozen=True)
class HistoryEvent:
    timestamp: datetime
    #: TRAINING_STARTED, TRAINING_COMPLETED, TRAINING_FAILED, TRAINING_SKIPPED, TRAINING_STOPPED,
    #: PUBLISHED, ROLLED_BACK or THRESHOLD_CHANGED.
    event_type: str
    dataset: str
    message: str
    details: dict[str, Any]  # exactly as the history log holds them (integers stay integers)

    @classmethod
    def from_proto(cls, event: trainer_pb2.HistoryEvent) -> HistoryEvent:
        # details_json, not the Struct `details`: a Struct holds every number as a double.
        return from_message(
            cls,
            event,
            timestamp=timestamp(event.timestamp) or datetime.fromtimestamp(0, UTC),
            details=json.loads(event.details_json) if event.details_json else {},
        )

    def to_dict(self) -> dict[str, Any]:
        return to_json_value(asdict(self))


@dataclass(frozen=True)
class Rollback:
    version: int  # the new version that carries the restored bundle
    restored_from: int
    next: str  # what happens from here

    @classmethod
    def from_proto(cls, response: trainer_pb2.RollbackResponse) -> Rollback:
        return from_message(cls, response)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ThresholdChange:
    version: int  # the new version with the moved thresholds
    next: str

    @classmethod
    def from_proto(cls, response: trainer_pb2.SetThresholdResponse) -> ThresholdChange:
        return from_message(cls, response)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainerClient(ServiceClient):
    service = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
    label = "trainer"
    stub_class = trainer_pb2_grpc.TrainerStub

    def train(
        self, dataset: str, *, force: bool = False, data_path: str | None = None, model_kind: str | None = None
    ) -> Job:
        """Start a job and return at once (AlreadyExists while the dataset is training)."""
        request = trainer_pb2.TrainRequest(
            dataset=dataset, force=force, data_path=data_path or "", model_kind=model_kind or ""
        )
        return Job.from_proto(self._call("Train", request).job)

    def job(self, job_id: str) -> Job:
        return Job.from_proto(self._call("GetJob", trainer_pb2.GetJobRequest(job_id=job_id)).job)

    def watch_job(self, job_id: str, *, timeout: float | None = None) -> Iterator[Job]:
        """The job as it progresses (phase, group, epoch, loss), until it ends; the last update
        is its final state. `timeout` bounds the whole watch (None: as long as the job runs)."""
        for update in self._stream("WatchJob", trainer_pb2.WatchJobRequest(job_id=job_id), timeout=timeout):
            yield Job.from_proto(update.job)

    def status(self, dataset: str | None = None) -> list[DatasetStatus]:
        """Every dataset's status, or the one named."""
        response = self._call("GetStatus", trainer_pb2.GetStatusRequest(dataset=dataset or ""))
        return [DatasetStatus.from_proto(s) for s in response.datasets]

    def dataset_of(self, model: str) -> str:
        """The dataset whose model is `model` (a dataset's own name also answers)."""
        statuses = self.status()
        for status in statuses:
            if status.model == model:
                return status.dataset
        if any(status.dataset == model for status in statuses):
            return model
        raise NotFound(f"trainer at {self.target}: no dataset trains a model named {model!r}")

    def history(
        self,
        dataset: str | None = None,
        types: str | Sequence[str] | None = None,
        *,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[HistoryEvent]:
        """The newest `limit` events (of `dataset`, of these `types`), oldest first; `since`
        keeps those at or after that time (naive datetimes are taken as UTC)."""
        event_types = [types] if isinstance(types, str) else list(types or ())
        request = trainer_pb2.HistoryRequest(dataset=dataset or "", event_types=event_types, limit=limit)
        events = [HistoryEvent.from_proto(e) for e in self._call("History", request).events]
        if since is not None:
            since = since if since.tzinfo is not None else since.replace(tzinfo=UTC)
            events = [e for e in events if e.timestamp >= since]
        return events

    def rollback(self, dataset: str, version: int | None = None) -> Rollback:
        """Serve an earlier version again (None: the newest complete one before the live one)."""
        return Rollback.from_proto(
            self._call("Rollback", trainer_pb2.RollbackRequest(dataset=dataset, version=version or 0))
        )

    def set_threshold(self, dataset: str, percentile: float) -> ThresholdChange:
        """Move every group's threshold to `percentile` (0 < p < 100) of its normal scores, kept
        for later versions; 0 clears it (back to the spec's percentile)."""
        request = trainer_pb2.SetThresholdRequest(dataset=dataset, percentile=percentile)
        return ThresholdChange.from_proto(self._call("SetThreshold", request))
