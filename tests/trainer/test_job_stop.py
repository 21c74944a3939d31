"""A long training job ends early, publishing nothing, in two ways: SIGTERM to the trainer
stops it inside its numeric steps (the kNN's distance blocks of the default `auto` kind),
so the process exits within the grace period and the job is recorded as stopped (which the
next start does not report again as interrupted); and a job past its
`training.time_budget_seconds` fails with a message that says so."""

import json
import signal

import numpy as np
import pandas as pd
import pytest

from oddity.common import bundle
from oddity.trainer.job_control import STOPPED_MESSAGE
from oddity.trainer.runner import JobRunner
from oddity.v1 import trainer_pb2, trainer_pb2_grpc
from tests.conftest import start_trainer
from tests.support import datasets
from tests.support.servers import ServiceProcess, channel
from tests.trainer.test_robustness import run_job

pytestmark = pytest.mark.slow  # real trainer processes on a dataset that trains for a minute or more

ROWS = 200_000
# Far below the uninterrupted training's time (`auto` on these rows: about a minute and a half
# here), above a stop that waits for one distance block.
EXIT_BOUND_SECONDS = 20


def start(data_volume, repository) -> ServiceProcess:
    process = ServiceProcess(
        "oddity.trainer.main",
        ["--data-volume", str(data_volume), "--model-repository", str(repository), "--no-watch"],
    ).start()
    process.wait_ready("oddity.v1.Trainer")
    return process


def write_long_dataset(data_volume, name: str, rows: int = ROWS, **training) -> None:
    """The default kind (`auto`: two kNN candidates weighed, then each cross-fitted) on rows
    of 8 features, every row used."""
    values = np.random.default_rng(0).normal(size=(rows, 8)).round(4)
    spec = {
        "sources": [{"path": "*.csv"}],
        "retrain": {"policy": "manual"},
        "training": {"max_rows": rows, **training},
    }
    datasets.write_dataset(
        data_volume, name, spec, {"rows.csv": pd.DataFrame(values, columns=[f"f{i}" for i in range(8)])}
    )


def history(data_volume) -> list[dict]:
    return [json.loads(line) for line in (data_volume / ".oddity" / "history.jsonl").read_text().splitlines()]


def test_sigterm_mid_training_stops_the_job_and_the_trainer_exits(data_volume, repository):
    write_long_dataset(data_volume, "big")
    process = start(data_volume, repository)
    try:
        with channel(process.target) as ch:
            stub = trainer_pb2_grpc.TrainerStub(ch)
            job = stub.Train(trainer_pb2.TrainRequest(dataset="big")).job
            for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=300):
                if update.job.phase == "training":
                    break
            else:
                raise AssertionError("the job ended before training")
            # Inside the candidates' kNN scoring now: no progress report comes until a whole
            # candidate has been weighed.
            status = stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="big")).datasets[0]
            assert status.training_in_progress
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=EXIT_BOUND_SECONDS) == 0
    finally:
        process.kill()
    assert bundle.list_versions(repository / "big") == []
    events = history(data_volume)
    assert [e["event_type"] for e in events] == ["TRAINING_STARTED", "TRAINING_STOPPED"]
    stopped = events[-1]
    assert (stopped["message"], stopped["details"]["job_id"]) == (STOPPED_MESSAGE, job.id)
    assert not list((data_volume / ".oddity" / "running").glob("*.json"))  # nothing left to recover

    restarted = start(data_volume, repository)  # the next start has nothing to report of that job
    try:
        with channel(restarted.target) as ch:
            status = trainer_pb2_grpc.TrainerStub(ch).GetStatus(trainer_pb2.GetStatusRequest(dataset="big"))
            assert not status.datasets[0].training_in_progress
    finally:
        assert restarted.terminate() == 0
    assert [e["event_type"] for e in history(data_volume)] == ["TRAINING_STARTED", "TRAINING_STOPPED"]


def test_a_job_past_its_time_budget_fails_and_publishes_nothing(data_volume, repository):
    write_long_dataset(data_volume, "slow", rows=50_000, time_budget_seconds=1)  # a minute's training
    process = start(data_volume, repository)
    try:
        with channel(process.target) as ch:
            stub = trainer_pb2_grpc.TrainerStub(ch)
            job = stub.Train(trainer_pb2.TrainRequest(dataset="slow")).job
            final = list(stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=300))[-1].job
        assert process.terminate() == 0
    finally:
        process.kill()
    assert final.state == trainer_pb2.JOB_STATE_FAILED
    assert final.message.startswith("the job took longer than training.time_budget_seconds (1 s); it was ")
    assert final.message.endswith(
        "Nothing was published: raise training.time_budget_seconds in dataset.yaml, or lower training.max_rows"
    )
    assert bundle.list_versions(repository / "slow") == []
    events = history(data_volume)
    assert [e["event_type"] for e in events] == ["TRAINING_STARTED", "TRAINING_FAILED"]
    assert events[-1]["message"] == final.message


def test_a_stop_after_training_and_before_publishing_publishes_nothing(data_volume, repository, monkeypatch):
    """The stop arrives once the model is trained (Ctrl-C during validation and export): the
    job ends stopped at the publish stage's check, and no version is written."""
    trained = JobRunner._train

    def train_then_stop(self, *args, **kwargs):
        built = trained(self, *args, **kwargs)
        self.stop_jobs()
        return built

    monkeypatch.setattr(JobRunner, "_train", train_then_stop)
    datasets.write_dataset(
        data_volume,
        "late",
        {"sources": [{"path": "*.csv"}], "retrain": {"policy": "manual"}},
        {"rows.csv": datasets.sensor_frame(300)},
    )
    trainer = start_trainer(data_volume, repository, watch=False)
    try:
        last = run_job(trainer, "late")
    finally:
        trainer.close()
    assert (last.state, last.message, last.published_version) == (trainer_pb2.JOB_STATE_FAILED, STOPPED_MESSAGE, 0)
    assert bundle.list_versions(repository / "late") == []
