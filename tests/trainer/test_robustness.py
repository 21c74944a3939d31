"""Malformed data never stops the trainer or touches the live model: each case ends as
TRAINING_FAILED with its reason, and version 1 keeps serving."""

import grpc
import numpy as np
import pytest

from oddity.v1 import trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.client import detect_request

FEATURES = [f"sensor_{i}" for i in range(8)]


def run_job(trainer, dataset: str, **fields) -> trainer_pb2.Job:
    job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset=dataset, **fields)).job
    last = job
    for update in trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=120):
        last = update.job
    return last


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    data_volume, repository = root / "data", root / "models"
    (data_volume / "datasets").mkdir(parents=True)
    repository.mkdir()
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    spec = datasets.autoencoder_spec(
        features=FEATURES, retrain={"policy": "manual"}, model={"kind": "autoencoder", "params": {"epochs": 5}}
    )
    folder = datasets.write_dataset(data_volume, "plant", spec, {"normal.csv": datasets.sensor_frame(1000)})
    job = run_job(trainer, "plant")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    yield trainer, detector, folder
    trainer.close()
    detector.close()


def csv_bytes(frame) -> bytes:
    return frame.to_csv(index=False).encode()


def many_bad_rows() -> bytes:
    lines = csv_bytes(datasets.sensor_frame(200)).decode().splitlines()
    for i in range(1, len(lines), 3):  # a third of the rows: too many fields, or text where numbers belong
        lines[i] = lines[i] + ",999" if i % 2 else "oops," + lines[i].split(",", 1)[1]
    return ("\n".join(lines) + "\n").encode()


CASES = [
    ("bad rows", {"normal.csv": many_bad_rows()}, {}, "are malformed"),
    (
        "missing columns",
        {"normal.csv": csv_bytes(datasets.sensor_frame(500).drop(columns=["sensor_7"]))},
        {},
        "missing columns ['sensor_7']",
    ),
    ("empty file", {"normal.csv": b""}, {}, "normal.csv is empty"),
    ("non-UTF-8 bytes", {"normal.csv": "sensor_0,sensor_1\n1,\xe9\xff\n".encode("latin-1")}, {}, "is not UTF-8"),
    (
        "corrupt xlsx",
        {"broken.xlsx": b"PK\x03\x04 this is not a workbook"},
        {"data_path": "datasets/plant/broken.xlsx"},
        "broken.xlsx cannot be read as xlsx",
    ),
]


@pytest.mark.parametrize(("name", "files", "request_fields", "reason"), CASES, ids=[c[0] for c in CASES])
def test_malformed_data_fails_with_its_reason_and_the_live_version_serves(stack, name, files, request_fields, reason):
    trainer, detector, folder = stack
    good = (folder / "normal.csv").read_bytes()
    try:
        for file_name, content in files.items():
            (folder / file_name).write_bytes(content)
        job = run_job(trainer, "plant", **request_fields)
        assert job.state == trainer_pb2.JOB_STATE_FAILED, job.message
        assert reason in job.message
        last = trainer.stub.History(trainer_pb2.HistoryRequest(dataset="plant")).events[-1]
        assert last.event_type == "TRAINING_FAILED" and reason in last.message
        assert last.details["job_id"] == job.id
        status = trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="plant")).datasets[0]
        assert status.live_version == 1 and reason in status.last_error
        served = detector.stub.Detect(detect_request("plant", np.zeros((1, 8), np.float32)))
        assert served.model_version == 1
    finally:
        (folder / "normal.csv").write_bytes(good)
        for file_name in files:
            if file_name != "normal.csv":
                (folder / file_name).unlink()


def test_a_few_bad_rows_are_dropped_and_counted(stack):
    trainer, _detector, folder = stack
    good = (folder / "normal.csv").read_bytes()
    try:
        lines = good.decode().splitlines()
        lines[5] = "not,a,number," + lines[5].split(",", 3)[3]
        lines[9] = lines[9] + ",1,2"
        (folder / "normal.csv").write_text("\n".join(lines) + "\n")
        job = run_job(trainer, "plant")
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
        completed = [
            e
            for e in trainer.stub.History(trainer_pb2.HistoryRequest(dataset="plant")).events
            if e.event_type == "TRAINING_COMPLETED"
        ][-1]
        assert completed.details["dropped_rows"] == 2
        assert completed.details["samples"] == 998
    finally:
        (folder / "normal.csv").write_bytes(good)


def test_data_path_must_stay_inside_the_dataset_folder(stack):
    trainer, _, _ = stack
    for path in ("../../etc/passwd", "/etc/passwd"):
        with pytest.raises(grpc.RpcError) as info:
            trainer.stub.Train(trainer_pb2.TrainRequest(dataset="plant", data_path=path))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"data_path {path!r} leads outside the dataset folder" in info.value.details()


def test_invalid_spec_marks_only_that_dataset(stack):
    trainer, _, folder = stack
    broken = folder.parent / "broken"
    broken.mkdir()
    (broken / "dataset.yaml").write_text("sources: []\nmodel: {kind: magic}\n")
    try:
        statuses = {s.dataset: s for s in trainer.stub.GetStatus(trainer_pb2.GetStatusRequest()).datasets}
        assert statuses["plant"].valid
        assert not statuses["broken"].valid
        assert "model.kind" in statuses["broken"].error
        with pytest.raises(grpc.RpcError) as info:
            trainer.stub.Train(trainer_pb2.TrainRequest(dataset="broken"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "dataset 'broken' is invalid" in info.value.details()
    finally:
        for path in broken.iterdir():
            path.unlink()
        broken.rmdir()
