"""Showing that the trainer started nothing without watching the clock: wait until it has
looked at the datasets again (more completed periodic scans, `oddity_trainer_scans_total`),
then check that no job started."""

from __future__ import annotations

from oddity.v1 import trainer_pb2
from tests.support.waiting import wait_for

SCANS = "oddity_trainer_scans_total"


def after_scans(trainer, count: int = 3) -> None:
    """Return once `count` more scans have completed. The first may have begun before the
    call, so from 2 on at least one whole scan read the datasets as they are now (and started
    whatever was due: a started job is on the board before its scan completes)."""
    assert count >= 2, "one scan may have read the datasets before the call"
    seen = trainer.metric(SCANS)
    wait_for(lambda: trainer.metric(SCANS) >= seen + count, timeout=60, what=f"{count} more dataset scans")


def started(trainer, dataset: str) -> int:
    """Jobs of the dataset that started (TRAINING_STARTED events)."""
    request = trainer_pb2.HistoryRequest(dataset=dataset, event_types=["TRAINING_STARTED"], limit=1000)
    return len(trainer.stub.History(request).events)


def training(trainer, dataset: str) -> bool:
    """A job of the dataset is queued or running."""
    return trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset=dataset)).datasets[0].training_in_progress
