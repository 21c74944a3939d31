"""A dataset that keeps failing is retried with exponential backoff, not on every scan; a
change of its data ends the wait."""

import time

import pytest

from oddity.trainer.auto_training import Backoff
from oddity.trainer.job_records import LastRun
from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets
from tests.support.waiting import wait_for
from tests.trainer.scans import after_scans, started, training

BASE_SECONDS = 60.0  # longer than the test: no retry comes from the clock


def status(trainer) -> trainer_pb2.DatasetStatus:
    return trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="failing")).datasets[0]


def retry_wait(trainer) -> float:
    """Seconds from the last failure (its history event) to the retry GetStatus announces."""
    request = trainer_pb2.HistoryRequest(dataset="failing", event_types=["TRAINING_FAILED"], limit=1000)
    failed = trainer.stub.History(request).events[-1].timestamp.ToMicroseconds() / 1e6
    return status(trainer).next_retry_time.ToMicroseconds() / 1e6 - failed


@pytest.mark.slow
def test_a_failing_dataset_backs_off_and_a_change_ends_the_wait(data_volume, repository):
    # The gate refuses every model of this spec (a 95th-percentile threshold flags ~5%).
    spec = {
        "sources": [{"path": "*.csv"}],
        "validation": {"anomaly_rate": [0.5, 0.9]},
        "retrain": {"debounce_seconds": 0},
    }
    folder = datasets.write_dataset(data_volume, "failing", spec, {"rows.csv": datasets.sensor_frame(300)})
    trainer = start_trainer(
        data_volume, repository, scan_interval_seconds=0.2, retry_backoff_seconds=BASE_SECONDS,
        retry_backoff_max_seconds=3600,
    )
    try:
        failures = lambda: trainer.metric("oddity_trainer_consecutive_failures", dataset="failing")  # noqa: E731
        wait_for(lambda: failures() == 1, what="the first failure")
        after_scans(trainer)  # each sees the data that failed, and waits
        assert (training(trainer, "failing"), started(trainer, "failing")) == (False, 1)
        shown = status(trainer)
        assert shown.consecutive_failures == 1
        assert shown.last_error.startswith("group 'all': ") and "outside validation.anomaly_rate" in shown.last_error
        assert round(retry_wait(trainer)) == BASE_SECONDS

        # New data ends the wait at once (no backoff of minutes for a fix); failing again, the
        # next wait is twice as long.
        datasets.sensor_frame(50, seed=9).to_csv(folder / "rows.csv", mode="a", header=False, index=False)
        wait_for(lambda: failures() == 2, what="a run on the new data")
        after_scans(trainer)
        assert (training(trainer, "failing"), started(trainer, "failing")) == (False, 2)
        assert status(trainer).consecutive_failures == 2
        assert round(retry_wait(trainer)) == 2 * BASE_SECONDS
    finally:
        trainer.close()


@pytest.mark.parametrize(
    ("failures", "seconds"), [(0, 30.0), (1, 30.0), (2, 60.0), (3, 120.0), (4, 240.0), (5, 300.0), (40, 300.0)]
)
def test_the_wait_doubles_per_failure_up_to_its_cap(failures, seconds):
    assert Backoff(base_seconds=30, max_seconds=300).delay(failures) == seconds


@pytest.mark.parametrize(
    ("failures", "seconds_ago", "failed_on", "wait"),
    [(0, 0, "", None), (2, 0, "a", 60.0), (2, 0, "b", None), (2, 61, "a", None)],
    ids=["no failure", "the same data failed", "the data changed since", "the wait is over"],
)
def test_a_retry_waits_only_for_the_data_that_failed(failures, seconds_ago, failed_on, wait):
    run = LastRun(failures=failures, failed_at=time.time() - seconds_ago, failed_fingerprint=failed_on)
    retry_at = Backoff(base_seconds=30, max_seconds=300).next_retry(run, "a")
    assert retry_at == (run.failed_at + wait if wait is not None else None)
