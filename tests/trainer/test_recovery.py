"""A trainer killed mid-training publishes nothing; the next start cleans up and reports the
interrupted job as failed."""

import json
import signal

import pytest

from oddity.common import bundle
from oddity.trainer.job_control import STOPPED_MESSAGE
from oddity.trainer.jobs import INTERRUPTED_MESSAGE
from oddity.v1 import trainer_pb2, trainer_pb2_grpc
from tests.conftest import start_trainer
from tests.support import datasets
from tests.support.servers import ServiceProcess, channel


def start(data_volume, repository) -> ServiceProcess:
    process = ServiceProcess(
        "oddity.trainer.main",
        ["--data-volume", str(data_volume), "--model-repository", str(repository), "--no-watch"],
    ).start()
    process.wait_ready("oddity.v1.Trainer")
    return process


def start_long_training(process: ServiceProcess, data_volume, dataset: str) -> trainer_pb2.Job:
    """Start a 500-epoch job and return once it is two epochs in."""
    spec = datasets.autoencoder_spec(
        retrain={"policy": "manual"},
        model={"kind": "autoencoder", "params": {"epochs": 500, "patience": 500}},
    )
    datasets.write_dataset(data_volume, dataset, spec, {"rows.csv": datasets.sensor_frame(3000)})
    with channel(process.target) as ch:
        stub = trainer_pb2_grpc.TrainerStub(ch)
        job = stub.Train(trainer_pb2.TrainRequest(dataset=dataset)).job
        for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=120):
            if update.job.epoch >= 2:
                return job
    raise AssertionError("the job ended before its second epoch")


@pytest.mark.slow  # real trainer processes: a kill mid-training and a restart
def test_kill_during_training_then_restart(data_volume, repository):
    process = start(data_volume, repository)
    try:
        job = start_long_training(process, data_volume, "crashy")
        # A publisher that died mid-write leaves a hidden temporary folder behind.
        stale = repository / "crashy" / f"{bundle.TEMP_PREFIX}deadbeef"
        stale.mkdir(parents=True)
        (stale / "all.onnx").write_bytes(b"half a model")
        process.proc.send_signal(signal.SIGKILL)
        process.proc.wait(timeout=30)
    finally:
        process.kill()
    assert bundle.list_versions(repository / "crashy") == []

    restarted = start(data_volume, repository)
    try:
        assert not stale.exists()
        with channel(restarted.target) as ch:
            stub = trainer_pb2_grpc.TrainerStub(ch)
            old = stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id)).job
            assert old.state == trainer_pb2.JOB_STATE_FAILED and "interrupted" in old.message
            failed = stub.History(trainer_pb2.HistoryRequest(dataset="crashy", event_types=["TRAINING_FAILED"]))
            assert [e.details["job_id"] for e in failed.events] == [job.id]
            status = stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="crashy")).datasets[0]
            assert not status.training_in_progress and status.live_version == 0
    finally:
        restarted.terminate()
    lines = (data_volume / ".oddity" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["event_type"] for line in lines] == ["TRAINING_STARTED", "TRAINING_FAILED"]


@pytest.mark.slow  # a real trainer process stopped mid-training
def test_sigterm_during_training_ends_the_job_and_exits_zero(data_volume, repository):
    process = start(data_volume, repository)
    try:
        start_long_training(process, data_volume, "stopping")
        assert process.terminate(timeout=60) == 0
    finally:
        process.kill()
    assert bundle.list_versions(repository / "stopping") == []
    events = [json.loads(line) for line in (data_volume / ".oddity" / "history.jsonl").read_text().splitlines()]
    assert [e["event_type"] for e in events] == ["TRAINING_STARTED", "TRAINING_STOPPED"]
    assert events[-1]["message"] == STOPPED_MESSAGE
    assert not list((data_volume / ".oddity" / "running").glob("*.json"))  # nothing left to recover


JOB_ID = "0123456789abcdef"


@pytest.mark.parametrize(
    ("resumes", "checkpoint", "reason"),
    [(0, False, "interrupted"), (3, True, "interrupted 4 times; not resumed again")],
    ids=["without checkpoints", "resumed too often"],
)
def test_a_job_left_running_that_does_not_resume_is_failed_at_the_next_start(
    data_volume, repository, resumes, checkpoint, reason
):
    # What a killed trainer leaves: the job's crash record (and, for kinds that train in
    # epochs, its checkpoints).
    state = data_volume / ".oddity"
    (state / "running").mkdir(parents=True)
    record = {"id": JOB_ID, "dataset": "crashy", "trigger": "api", "started_at": "2026-01-01T00:00:00+00:00"}
    record.update(folder=str(data_volume / "datasets" / "crashy"), resumes=resumes)
    (state / "running" / f"{JOB_ID}.json").write_text(json.dumps(record))
    if checkpoint:
        (state / "checkpoints" / JOB_ID).mkdir(parents=True)
        (state / "checkpoints" / JOB_ID / "all.pt").write_bytes(b"weights")

    trainer = start_trainer(data_volume, repository)
    try:
        job = trainer.stub.GetJob(trainer_pb2.GetJobRequest(job_id=JOB_ID)).job
        assert (job.state, job.message) == (trainer_pb2.JOB_STATE_FAILED, INTERRUPTED_MESSAGE)
        failed = trainer.stub.History(trainer_pb2.HistoryRequest(dataset="crashy")).events
        assert [(e.event_type, e.details["reason"]) for e in failed] == [("TRAINING_FAILED", reason)]
        assert trainer.metric("oddity_trainer_jobs_total", dataset="crashy", outcome="failed") == 1
    finally:
        trainer.close()
    assert not list((state / "running").glob("*.json"))  # nothing left to recover
    assert not (state / "checkpoints" / JOB_ID).exists()
