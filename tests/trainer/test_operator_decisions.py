"""What operators decide lasts: a rollback holds until the data changes (or until Train, with
`after_rollback: hold`), and a threshold override is carried into later versions until it is
cleared. Both RPCs say what happens next, GetStatus shows them, and they survive a restart."""

import pytest

from oddity.common import bundle
from oddity.v1 import detector_pb2, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.waiting import wait_for
from tests.trainer.scans import after_scans, started, training
from tests.trainer.test_robustness import run_job

SCAN_SECONDS = 0.3


def spec(**retrain) -> dict:
    return {"sources": [{"path": "*.csv"}], "retrain": {"debounce_seconds": 0, **retrain}, "min_samples": 100}


def status(trainer, dataset: str) -> trainer_pb2.DatasetStatus:
    return trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset=dataset)).datasets[0]


def serving(detector, model: str) -> int:
    return detector.stub.GetModel(detector_pb2.GetModelRequest(model=model)).status.serving_version




def events(trainer, dataset: str, kind: str) -> list[trainer_pb2.HistoryEvent]:
    request = trainer_pb2.HistoryRequest(dataset=dataset, event_types=[kind], limit=1000)
    return list(trainer.stub.History(request).events)


@pytest.mark.slow
def test_a_rollback_holds_until_the_data_changes(data_volume, repository):
    folder = datasets.write_dataset(data_volume, "held", spec(), {"a.csv": datasets.sensor_frame(400)})
    detector = start_detector(repository)
    trainer = start_trainer(
        data_volume, repository, detectors=[detector.server.target], scan_interval_seconds=SCAN_SECONDS
    )
    try:
        wait_for(lambda: bundle.list_versions(repository / "held") == [1], what="version 1")
        datasets.sensor_frame(400, seed=1).to_csv(folder / "b.csv", index=False)
        wait_for(lambda: bundle.list_versions(repository / "held") == [1, 2], what="version 2")

        rolled = trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="held"))
        assert (rolled.version, rolled.restored_from) == (3, 1)
        assert rolled.next == "version 3 (a copy of version 1) serves until the data changes; then the trainer retrains"
        after_scans(trainer)  # on the data version 2 was trained on
        assert (training(trainer, "held"), started(trainer, "held")) == (False, 2)
        assert bundle.list_versions(repository / "held") == [1, 2, 3] and serving(detector, "held") == 3
        held = status(trainer, "held")
        assert (held.pinned_version, held.pinned_until) == (3, "the data changes")

        datasets.sensor_frame(400, seed=2).to_csv(folder / "c.csv", index=False)
        wait_for(lambda: bundle.list_versions(repository / "held") == [1, 2, 3, 4], what="version 4")
        triggers = [e.details["trigger"] for e in events(trainer, "held", "TRAINING_STARTED")]
        assert triggers[2:] == ["data_changed_after_rollback"]  # versions 1 and 2, then the release
        wait_for(lambda: status(trainer, "held").pinned_version == 0, what="the hold released")
    finally:
        trainer.close()
        detector.close()


@pytest.mark.slow
def test_with_hold_a_rollback_waits_for_train(data_volume, repository):
    folder = datasets.write_dataset(
        data_volume, "hold", spec(after_rollback="hold"), {"a.csv": datasets.sensor_frame(400)}
    )
    trainer = start_trainer(data_volume, repository, scan_interval_seconds=SCAN_SECONDS)
    try:
        wait_for(lambda: bundle.list_versions(repository / "hold") == [1], what="version 1")
        datasets.sensor_frame(400, seed=1).to_csv(folder / "b.csv", index=False)
        wait_for(lambda: bundle.list_versions(repository / "hold") == [1, 2], what="version 2")
        rolled = trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="hold"))
        assert rolled.next == "version 3 (a copy of version 1) serves until Train is called (after_rollback: hold)"
        datasets.sensor_frame(400, seed=2).to_csv(folder / "c.csv", index=False)
        after_scans(trainer)  # new data, and still the rolled-back version
        assert (training(trainer, "hold"), started(trainer, "hold")) == (False, 2)
        assert bundle.list_versions(repository / "hold") == [1, 2, 3]
        assert run_job(trainer, "hold").published_version == 4
        wait_for(lambda: status(trainer, "hold").pinned_version == 0, what="the hold released")
    finally:
        trainer.close()


@pytest.mark.slow
def test_a_threshold_override_is_carried_into_later_versions_until_cleared(data_volume, repository):
    folder = datasets.write_dataset(data_volume, "strict", spec(), {"a.csv": datasets.sensor_frame(600)})
    trainer = start_trainer(data_volume, repository, scan_interval_seconds=SCAN_SECONDS)
    try:
        wait_for(lambda: bundle.list_versions(repository / "strict") == [1], what="version 1")
        moved = trainer.stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="strict", percentile=99))
        assert (moved.version, moved.next) == (2, "later versions keep percentile 99 until SetThreshold(0) clears it")
        assert status(trainer, "strict").threshold_override == 99
    finally:
        trainer.close()

    # Kept on the data volume: a restarted trainer still knows.
    trainer = start_trainer(data_volume, repository, scan_interval_seconds=SCAN_SECONDS)
    try:
        assert status(trainer, "strict").threshold_override == 99
        datasets.sensor_frame(300, seed=3).to_csv(folder / "b.csv", index=False)
        wait_for(lambda: bundle.list_versions(repository / "strict") == [1, 2, 3], what="version 3")
        manifest = bundle.read_manifest(repository / "strict" / "3")
        assert [g.threshold_percentile for g in manifest.groups] == [99.0]

        cleared = trainer.stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="strict", percentile=0))
        assert cleared.next == "later versions use the spec's threshold_percentile (95)"
        assert [g.threshold_percentile for g in bundle.read_manifest(repository / "strict" / "4").groups] == [95.0]
        assert status(trainer, "strict").threshold_override == 0
    finally:
        trainer.close()
