"""A trainer killed (SIGKILL) while an mlp_classifier trains goes on from the job's last
checkpoint when it starts again: the same job ends with as many epochs, the same per-epoch
figures and the same held-out metrics as the same training run without interruption. The
checkpoints live in the data volume's state folder, never in the model repository, and go
once the job has ended."""

import json
import signal

import pytest

from oddity.common import bundle
from oddity.v1 import trainer_pb2, trainer_pb2_grpc
from tests.support import datasets
from tests.support.servers import ServiceProcess, channel
from tests.trainer.labelled_data import FEATURES, graded_scans

EVERY = 5  # epochs between checkpoints
KILL_AFTER = 12  # the watcher kills the trainer once it sees this epoch: checkpoint 10 is on disk

SPEC = {
    "sources": [{"path": "scans.csv"}],
    "features": FEATURES,
    "label": "grade",
    "score_column": "quality",
    "model": {
        "kind": "mlp_classifier",
        # Early stopping and a plateau schedule: both must carry over a restart for the run to
        # end on the same epoch with the same weights.
        "params": {
            "epochs": 60,
            "patience": 25,
            "lr_schedule": "plateau",
            "batch_size": 32,
            "hidden": [64],
            "checkpoint_every": EVERY,
        },
    },
    "min_samples": 100,
    "retrain": {"policy": "manual"},
}


def start(data_volume, repository) -> ServiceProcess:
    process = ServiceProcess(
        "oddity.trainer.main",
        ["--data-volume", str(data_volume), "--model-repository", str(repository), "--no-watch"],
    ).start()
    process.wait_ready("oddity.v1.Trainer")
    return process


def completed(process: ServiceProcess, dataset: str) -> dict:
    with channel(process.target) as ch:
        events = trainer_pb2_grpc.TrainerStub(ch).History(
            trainer_pb2.HistoryRequest(dataset=dataset, event_types=["TRAINING_COMPLETED"])
        ).events
    (event,) = events
    return json.loads(event.details_json)


@pytest.mark.slow  # two real trainer processes, an uninterrupted run and a resumed one
def test_a_killed_trainer_resumes_the_job_from_its_last_checkpoint(data_volume, repository):
    scans = graded_scans(scale=3.0, seed=3)
    for name in ("steady", "crashy"):  # the same rows and spec under two names
        datasets.write_dataset(data_volume, name, SPEC, {"scans.csv": scans})
    checkpoints = data_volume / ".oddity" / "checkpoints"
    process = start(data_volume, repository)
    try:
        with channel(process.target) as ch:
            stub = trainer_pb2_grpc.TrainerStub(ch)
            steady = stub.Train(trainer_pb2.TrainRequest(dataset="steady")).job
            for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=steady.id), timeout=300):
                last = update.job
            assert last.state == trainer_pb2.JOB_STATE_SUCCEEDED, last.message
            assert last.resumed_from_epoch == 0
            uninterrupted = completed(process, "steady")
            assert uninterrupted["metrics"]["epochs"] > KILL_AFTER + EVERY  # the kill falls inside the run
            assert not checkpoints.exists() or not any(checkpoints.iterdir())  # gone with the job

            job = stub.Train(trainer_pb2.TrainRequest(dataset="crashy")).job
            for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=300):
                if update.job.epoch >= KILL_AFTER:
                    seen = update.job.epoch
                    process.proc.send_signal(signal.SIGKILL)
                    break
            else:
                pytest.fail("the job ended before the kill")
        process.proc.wait(timeout=30)
    finally:
        process.kill()
    assert (checkpoints / job.id / "all.pt").is_file()
    assert bundle.list_versions(repository / "crashy") == []
    assert not list(repository.rglob("*.pt"))  # checkpoints never go to the model repository

    restarted = start(data_volume, repository)
    try:
        with channel(restarted.target) as ch:
            stub = trainer_pb2_grpc.TrainerStub(ch)
            final = None
            for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=300):
                final = update.job
            assert final is not None and final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final
            # From the last checkpoint the killed process wrote: the one at or just after the
            # last epoch the watcher saw (the process may have run on for a moment).
            assert final.resumed_from_epoch % EVERY == 0
            assert seen // EVERY * EVERY <= final.resumed_from_epoch <= seen // EVERY * EVERY + EVERY
            after_restart = completed(restarted, "crashy")
            history = stub.History(trainer_pb2.HistoryRequest(dataset="crashy")).events
    finally:
        restarted.terminate()

    assert after_restart["resumed_from_epoch"] == {"all": final.resumed_from_epoch}
    assert after_restart["metrics"]["epochs"] == uninterrupted["metrics"]["epochs"]
    assert after_restart["metrics"]["best_epoch"] == uninterrupted["metrics"]["best_epoch"]
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "score_mae", "temperature", "expected_calibration_error"):
        assert after_restart["metrics"][name] == pytest.approx(uninterrupted["metrics"][name], abs=1e-6), name
    resumed_epochs, whole_epochs = after_restart["epochs"]["all"], uninterrupted["epochs"]["all"]
    assert [e["epoch"] for e in resumed_epochs] == [e["epoch"] for e in whole_epochs]
    for mine, theirs in zip(resumed_epochs, whole_epochs, strict=True):
        assert mine["validation_loss"] == pytest.approx(theirs["validation_loss"], abs=1e-6)
    # One job: started, resumed (the same id), completed and published; no interrupted failure.
    assert [(e.event_type, json.loads(e.details_json)["job_id"]) for e in history] == [
        ("TRAINING_STARTED", job.id),
        ("TRAINING_STARTED", job.id),
        ("TRAINING_COMPLETED", job.id),
        ("PUBLISHED", job.id),
    ]
    assert "resuming" in history[1].message
    assert not (checkpoints / job.id).exists()
