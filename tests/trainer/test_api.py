"""The Trainer API: jobs and their progress, min_samples, rollback, thresholds, history."""

import json
import socket

import grpc
import numpy as np
import pandas as pd
import pytest

from oddity.common import bundle
from oddity.v1 import trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.client import detect_request
from tests.support.waiting import wait_for
from tests.trainer.test_robustness import run_job


@pytest.fixture
def stack(data_volume, repository):
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    yield trainer, detector
    trainer.close()
    detector.close()


def manual_spec(epochs: int = 5, **overrides) -> dict:
    overrides.setdefault("retrain", {"policy": "manual"})
    return datasets.autoencoder_spec(model={"kind": "autoencoder", "params": {"epochs": epochs}}, **overrides)


def test_below_min_samples_is_skipped_unless_forced(stack, data_volume):
    trainer, detector = stack
    datasets.write_dataset(data_volume, "small", manual_spec(min_samples=500), {"rows.csv": datasets.sensor_frame(300)})
    job = run_job(trainer, "small")
    assert job.state == trainer_pb2.JOB_STATE_SKIPPED
    assert "not enough samples: 300 < min_samples 500" in job.message
    forced = run_job(trainer, "small", force=True)
    assert forced.state == trainer_pb2.JOB_STATE_SUCCEEDED and forced.published_version == 1
    assert detector.stub.Detect(detect_request("small", np.zeros((1, 8), np.float32))).model_version == 1


@pytest.mark.slow
def test_watch_job_streams_epochs_and_a_second_train_is_refused(stack, data_volume):
    trainer, _ = stack
    datasets.write_dataset(data_volume, "slow", manual_spec(epochs=40), {"rows.csv": datasets.sensor_frame(2000)})
    job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset="slow")).job
    with pytest.raises(grpc.RpcError) as info:
        trainer.stub.Train(trainer_pb2.TrainRequest(dataset="slow"))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"already training (job {job.id})" in info.value.details()
    updates = [u.job for u in trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=120)]
    epochs = [u.epoch for u in updates if u.phase == "training" and u.epoch]
    assert epochs and epochs == sorted(epochs) and all(u.loss > 0 for u in updates if u.epoch)
    # Fast phases may be coalesced away in the stream; training and the end always show.
    assert {"training", "done"} <= {u.phase for u in updates}
    assert updates[-1].state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert trainer.stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id)).job.published_version == 1


def test_unknown_names_and_kinds(stack, data_volume):
    trainer, _ = stack
    datasets.write_dataset(data_volume, "plain", manual_spec(), {"rows.csv": datasets.sensor_frame(300)})
    cases = [
        (trainer.stub.Train, trainer_pb2.TrainRequest(dataset="nope"), grpc.StatusCode.NOT_FOUND, "dataset 'nope'"),
        (
            trainer.stub.Train,
            trainer_pb2.TrainRequest(dataset="plain", model_kind="magic"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown model_kind 'magic'",
        ),
        (
            trainer.stub.Train,
            trainer_pb2.TrainRequest(dataset="plain", model_kind="svm"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not fit dataset 'plain'",
        ),
        (trainer.stub.GetJob, trainer_pb2.GetJobRequest(job_id="x"), grpc.StatusCode.NOT_FOUND, "job 'x' not found"),
        (
            trainer.stub.Rollback,
            trainer_pb2.RollbackRequest(dataset="plain"),
            grpc.StatusCode.NOT_FOUND,
            "has no versions",
        ),
        (
            trainer.stub.SetThreshold,
            trainer_pb2.SetThresholdRequest(dataset="plain", percentile=150),
            grpc.StatusCode.INVALID_ARGUMENT,
            "percentile must lie in (0, 100)",
        ),
    ]
    for method, request, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            method(request)
        assert info.value.code() == code and message in info.value.details(), info.value.details()


def test_rollback_threshold_and_retraining_keep_versions_and_history_consistent(stack, data_volume, repository):
    trainer, detector = stack
    folder = datasets.write_dataset(data_volume, "line", manual_spec(), {"rows.csv": datasets.sensor_frame(1500)})
    assert run_job(trainer, "line").published_version == 1
    datasets.sensor_frame(1500, seed=7).to_csv(folder / "rows.csv", mode="a", header=False, index=False)
    assert run_job(trainer, "line").published_version == 2
    v1 = bundle.load_verified_version(repository, "line", 1)

    rolled = trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="line"))
    assert (rolled.version, rolled.restored_from) == (3, 1)
    v3 = bundle.load_verified_version(repository, "line", 3)
    assert v3.onnx == v1.onnx and v3.manifest.data_fingerprint == v1.manifest.data_fingerprint
    probe = datasets.sensor_frame(200, seed=11).to_numpy(np.float32)
    served = detector.stub.Detect(detect_request("line", probe))
    assert served.model_version == 3

    moved = trainer.stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="line", percentile=80))
    assert moved.version == 4
    v4 = bundle.load_verified_version(repository, "line", 4)
    assert v4.onnx == v3.onnx and v4.manifest.groups[0].threshold_percentile == 80
    assert v4.manifest.groups[0].threshold < v3.manifest.groups[0].threshold
    stricter = detector.stub.Detect(detect_request("line", probe))
    assert stricter.model_version == 4 and sum(stricter.is_anomaly) > sum(served.is_anomaly)

    assert run_job(trainer, "line").published_version == 5
    events = trainer.stub.History(trainer_pb2.HistoryRequest(dataset="line")).events
    published = [int(e.details["version"]) for e in events if e.event_type == "PUBLISHED"]
    assert published == [1, 2, 3, 4, 5]
    types = {e.event_type for e in events}
    assert {"TRAINING_STARTED", "TRAINING_COMPLETED", "PUBLISHED", "ROLLED_BACK", "THRESHOLD_CHANGED"} <= types
    only_rollbacks = trainer.stub.History(trainer_pb2.HistoryRequest(dataset="line", event_types=["ROLLED_BACK"]))
    assert [e.details["restored_from"] for e in only_rollbacks.events] == [1]
    assert trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="line")).datasets[0].live_version == 5


def test_every_event_type_reaches_the_history_log(stack, data_volume):
    trainer, _ = stack
    folder = datasets.write_dataset(
        data_volume, "all_events", manual_spec(min_samples=100), {"rows.csv": datasets.sensor_frame(600)}
    )
    run_job(trainer, "all_events")
    run_job(trainer, "all_events", force=True)  # unchanged data trains again only when forced
    trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="all_events"))
    trainer.stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="all_events", percentile=90))
    (folder / "rows.csv").write_bytes(b"")
    run_job(trainer, "all_events")  # fails: empty file
    datasets.sensor_frame(50).to_csv(folder / "rows.csv", index=False)
    run_job(trainer, "all_events")  # skipped: below min_samples
    lines = (data_volume / ".oddity" / "history.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert {e["event_type"] for e in events} == {
        "TRAINING_STARTED",
        "TRAINING_COMPLETED",
        "TRAINING_FAILED",
        "TRAINING_SKIPPED",
        "PUBLISHED",
        "ROLLED_BACK",
        "THRESHOLD_CHANGED",
    }
    assert all(set(e) == {"timestamp", "event_type", "dataset", "message", "details"} for e in events)


def test_groups_train_apart_and_small_groups_fall_back(stack, data_volume, repository):
    trainer, detector = stack
    young = datasets.sensor_frame(900, seed=1)
    young["age"] = np.random.default_rng(0).uniform(3, 6, len(young))
    older = datasets.sensor_frame(900, seed=2) + 3.0
    older["age"] = np.random.default_rng(1).uniform(6, 9, len(older))
    oldest = datasets.sensor_frame(40, seed=3)
    oldest["age"] = 10.0
    spec = manual_spec(min_samples=300, routing={"key": "age", "bounds": [3, 6, 9, 12], "all_group": True})
    datasets.write_dataset(data_volume, "kids", spec, {"rows.csv": pd.concat([young, older, oldest])})
    job = run_job(trainer, "kids")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    manifest = bundle.load_verified_version(repository, "kids", 1).manifest
    status = {g.name: g.status for g in manifest.groups}
    assert status == {
        "age_3_6": 1,
        "age_6_9": 1,
        "age_9_12": 2,
        "all": 1,  # 1 = active, 2 = insufficient data
    }
    assert manifest.routing_key == "age" and "age" not in manifest.feature_names
    rows = np.vstack(
        [
            young.drop(columns="age").to_numpy()[:2],
            older.drop(columns="age").to_numpy()[:2],
            oldest.drop(columns="age").to_numpy()[:1],
        ]
    ).astype(np.float32)
    response = detector.stub.Detect(detect_request("kids", rows, routing_values=[4, 5, 7, 8, 10]))
    assert list(response.groups) == ["age_3_6", "age_3_6", "age_6_9", "age_6_9", "all"]
    assert list(response.fallback) == [False, False, False, False, True]


def test_a_model_failing_the_gate_is_not_published(stack, data_volume, repository):
    trainer, _ = stack
    spec = manual_spec(validation={"anomaly_rate": [0.5, 0.9]})  # a 95th-percentile threshold flags ~5%
    datasets.write_dataset(data_volume, "gated", spec, {"rows.csv": datasets.sensor_frame(2000)})
    job = run_job(trainer, "gated")
    assert job.state == trainer_pb2.JOB_STATE_FAILED
    assert "of 2000 normal rows are flagged when each is judged by a threshold taken on the others, " in job.message
    assert job.message.endswith(
        "outside validation.anomaly_rate [50%, 90%]; lower threshold_percentile (now 95) or widen "
        "validation.anomaly_rate"
    )
    assert bundle.list_versions(repository / "gated") == []
    failed = trainer.stub.History(trainer_pb2.HistoryRequest(dataset="gated", event_types=["TRAINING_FAILED"]))
    assert failed.events[-1].details["reason"] == job.message


@pytest.mark.slow
def test_interval_policy_retrains_on_its_clock_and_skips_unchanged_data(data_volume, repository):
    spec = manual_spec(retrain={"policy": "interval", "interval_hours": 0.0002, "debounce_seconds": 0})  # 0.72 s
    datasets.write_dataset(data_volume, "clock", spec, {"rows.csv": datasets.sensor_frame(600)})
    trainer = start_trainer(data_volume, repository, scan_interval_seconds=0.5)

    def after_a_skip():
        events = trainer.stub.History(trainer_pb2.HistoryRequest(dataset="clock")).events
        return events if any(e.event_type == "TRAINING_SKIPPED" for e in events) else None

    try:
        events = wait_for(after_a_skip, timeout=60, what="an interval run on unchanged data")
        published = [e for e in events if e.event_type == "PUBLISHED"]
        skipped = next(e for e in events if e.event_type == "TRAINING_SKIPPED")
        assert len(published) == 1 and "data unchanged since version 1" in skipped.message
        assert skipped.details["trigger"] == "interval"
    finally:
        trainer.close()


@pytest.mark.slow
def test_every_detector_is_told_and_an_unreachable_one_only_logged(data_volume, repository):
    with socket.socket() as s:  # an address where no detector listens
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"
    # The detectors poll rarely: only the trainer's LoadModel makes them serve a new version at once.
    detectors = [start_detector(repository, poll_interval_seconds=600) for _ in range(2)]
    targets = [nobody, *(d.server.target for d in detectors)]
    trainer = start_trainer(data_volume, repository, detectors=targets, detector_timeout_seconds=1)
    try:
        datasets.write_dataset(data_volume, "told", manual_spec(), {"rows.csv": datasets.sensor_frame(600)})
        job = run_job(trainer, "told")
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED and job.published_version == 1, job.message
        for detector in detectors:
            assert detector.stub.Detect(detect_request("told", np.zeros((1, 8), np.float32))).model_version == 1
        moved = trainer.stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="told", percentile=90))
        for detector in detectors:
            assert detector.stub.Detect(detect_request("told", np.zeros((1, 8), np.float32))).model_version == 2
        assert moved.version == 2
    finally:
        trainer.close()
        for detector in detectors:
            detector.close()


def test_train_on_unchanged_data_says_so(stack, data_volume):
    trainer, _ = stack
    datasets.write_dataset(data_volume, "same", manual_spec(), {"rows.csv": datasets.sensor_frame(300)})
    assert run_job(trainer, "same").published_version == 1
    again = run_job(trainer, "same")
    assert again.state == trainer_pb2.JOB_STATE_SKIPPED
    assert again.message == "data and spec unchanged since version 1; Train with force to train again"
    forced = run_job(trainer, "same", force=True)
    assert forced.state == trainer_pb2.JOB_STATE_SUCCEEDED
    assert forced.message == "published version 2 (data and spec unchanged since version 1)"
