"""A dataset that keeps failing is retried with exponential backoff, not on every scan; a
change of its data ends the wait."""

import math
import time

from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets

WINDOW_SECONDS = 8.0
BASE_SECONDS = 0.5


def started(trainer) -> int:
    request = trainer_pb2.HistoryRequest(dataset="failing", event_types=["TRAINING_STARTED"], limit=1000)
    return len(trainer.stub.History(request).events)


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
        retry_backoff_max_seconds=60,
    )
    try:
        time.sleep(WINDOW_SECONDS)  # 40 scans
        runs = started(trainer)
        # Runs at about 0, 0.5, 1.5, 3.5 and 7.5 s: log2-many, where one per scan would be 40.
        assert 2 <= runs <= math.floor(math.log2(WINDOW_SECONDS / BASE_SECONDS)) + 2, runs
        assert trainer.metric("oddity_trainer_consecutive_failures", dataset="failing") == runs
        shown = trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="failing")).datasets[0]
        assert shown.consecutive_failures == runs
        assert shown.last_error.startswith("group 'all': ") and "outside validation.anomaly_rate" in shown.last_error
        assert shown.next_retry_time.ToSeconds() > time.time() - 1  # the wait ahead (or just ending)

        # New data ends the wait at once (no backoff of minutes for a fix).
        datasets.sensor_frame(50, seed=9).to_csv(folder / "rows.csv", mode="a", header=False, index=False)
        deadline = time.monotonic() + 10
        while started(trainer) == runs:
            assert time.monotonic() < deadline, "a change did not end the backoff"
            time.sleep(0.1)
    finally:
        trainer.close()
