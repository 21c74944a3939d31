"""gRPC front end of the trainer: protobuf in, domain call, protobuf out.

Reason to change: the Trainer API's messages (protos/oddity/v1/trainer.proto).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from oddity.common.logging import annotate_request
from oddity.trainer.jobs import Job
from oddity.trainer.service import DatasetStatus, TrainerService
from oddity.v1 import trainer_pb2, trainer_pb2_grpc

JOB_STATES = {
    "queued": trainer_pb2.JOB_STATE_QUEUED,
    "running": trainer_pb2.JOB_STATE_RUNNING,
    "succeeded": trainer_pb2.JOB_STATE_SUCCEEDED,
    "failed": trainer_pb2.JOB_STATE_FAILED,
    "skipped": trainer_pb2.JOB_STATE_SKIPPED,
}


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def job_to_proto(job: Job) -> trainer_pb2.Job:
    return trainer_pb2.Job(
        id=job.id,
        dataset=job.dataset,
        state=JOB_STATES[job.state],
        phase=job.phase,
        epoch=job.epoch,
        total_epochs=job.total_epochs,
        loss=job.loss,
        group=job.group,
        message=job.message,
        trigger=job.trigger,
        created_at=_timestamp(job.created_at),
        started_at=_timestamp(job.started_at),
        finished_at=_timestamp(job.finished_at),
        published_version=job.published_version,
        metrics=job.metrics,
        train_loss=job.train_loss,
        validation_loss=job.validation_loss,
        epoch_metrics=job.epoch_metrics,
        resumed_from_epoch=job.resumed_from_epoch,
        progress_unit=job.progress_unit,
    )


def status_to_proto(status: DatasetStatus) -> trainer_pb2.DatasetStatus:
    return trainer_pb2.DatasetStatus(
        dataset=status.dataset,
        valid=status.valid,
        error=status.error,
        model=status.model,
        kind=status.kind,
        training_in_progress=status.training_in_progress,
        last_training_time=_timestamp(status.last_training_time),
        auto_training=trainer_pb2.AutoTraining(
            policy=status.policy,
            enabled=status.auto_enabled,
            interval_hours=status.interval_hours,
            debounce_seconds=status.debounce_seconds,
            min_samples=status.min_samples,
        ),
        samples=status.samples,
        group_samples=status.group_samples,
        last_error=status.last_error,
        live_version=status.live_version,
        data_fingerprint=status.data_fingerprint,
        pinned_version=status.pinned_version,
        pinned_until=status.pinned_until,
        threshold_override=status.threshold_override,
        consecutive_failures=status.consecutive_failures,
        next_retry_time=_timestamp(status.next_retry_time),
        left_out_columns=status.left_out_columns,
        left_out_column_count=status.left_out_column_count,
        live_groups=[
            trainer_pb2.GroupEvidence(
                group=g.name,
                status=g.status,
                train_samples=g.train_samples,
                threshold=g.threshold,
                threshold_percentile=g.threshold_percentile,
                calibration=g.calibration,
                members=g.members,
                evaluation=g.evaluation if g.HasField("evaluation") else None,
                metrics=g.metrics,
                selection=g.selection,
            )
            for g in status.live_groups
        ],
    )


def event_to_proto(event: dict[str, Any]) -> trainer_pb2.HistoryEvent:
    """`details` as a Struct (every number a double) and as the log's own JSON (`details_json`:
    integers stay integers)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.fromisoformat(event["timestamp"]))
    raw = event.get("details") or {}
    details = struct_pb2.Struct()
    details.update(raw)
    return trainer_pb2.HistoryEvent(
        timestamp=stamp,
        event_type=event.get("event_type", ""),
        dataset=event.get("dataset", ""),
        message=event.get("message", ""),
        details=details,
        details_json=json.dumps(raw, sort_keys=True),
    )


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    """`service()` returns the trainer's use cases (it raises UNAVAILABLE until the trainer has
    started: the servicer is registered before the server starts, the use cases need the loop)."""

    def __init__(self, service: Callable[[], TrainerService]) -> None:
        self._service = service

    # The admin RPCs (Train, Rollback, SetThreshold) name what they change in the call's audit
    # line as soon as they know it (log lines cut long names: oddity.common.logging).
    async def Train(self, request, context):
        annotate_request(dataset=request.dataset)
        job = await self._service().train(
            request.dataset, force=request.force, data_path=request.data_path, model_kind=request.model_kind
        )
        annotate_request(job=job.id)
        return trainer_pb2.TrainResponse(job=job_to_proto(job))

    async def GetJob(self, request, context):
        return trainer_pb2.GetJobResponse(job=job_to_proto(self._service().get_job(request.job_id)))

    async def WatchJob(self, request, context):
        async for job in self._service().watch_job(request.job_id):
            yield trainer_pb2.WatchJobResponse(job=job_to_proto(job))

    async def GetStatus(self, request, context):
        statuses = await self._service().statuses(request.dataset)
        return trainer_pb2.GetStatusResponse(datasets=[status_to_proto(s) for s in statuses])

    async def History(self, request, context):
        events = await self._service().history(request.dataset, tuple(request.event_types), request.limit or 100)
        return trainer_pb2.HistoryResponse(events=[event_to_proto(e) for e in events])

    async def Rollback(self, request, context):
        annotate_request(dataset=request.dataset, restored_from=request.version)
        version, restored, next_step = await self._service().rollback(request.dataset, request.version)
        annotate_request(version=version, restored_from=restored)
        return trainer_pb2.RollbackResponse(version=version, restored_from=restored, next=next_step)

    async def SetThreshold(self, request, context):
        annotate_request(dataset=request.dataset, percentile=request.percentile)
        version, next_step = await self._service().set_threshold(request.dataset, request.percentile)
        annotate_request(version=version)
        return trainer_pb2.SetThresholdResponse(version=version, next=next_step)
