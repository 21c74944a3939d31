"""Experiment tracking: with MLflow installed and a tracking URI set, a training job is an
MLflow run holding its parameters, every epoch's figures, the held-out evaluation and the
exported ONNX graph; without MLflow the same job passes with tracking off and the history
still holds the figures."""

import hashlib
import json
import sys

from mlflow.tracking import MlflowClient

from oddity.common import bundle
from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets
from tests.trainer.labelled_data import FEATURES, graded_scans
from tests.trainer.test_supervised import train

EPOCHS = 12


def spec() -> dict:
    return {
        "sources": [{"path": "scans.csv"}],
        "features": FEATURES,
        "label": "grade",
        "score_column": "quality",
        "model": {"kind": "mlp_classifier", "params": {"epochs": EPOCHS, "patience": 0}},
        "min_samples": 100,
        "retrain": {"policy": "manual"},
    }


def test_a_job_is_an_mlflow_run_and_runs_without_mlflow_too(tmp_path, data_volume, repository, monkeypatch):
    # MLflow 3 keeps a plain folder as tracking store only when asked (a server or a database
    # is what it recommends; a folder is what a test can hold).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    scans = graded_scans(seed=4)
    for name in ("tracked", "untracked"):
        datasets.write_dataset(data_volume, name, spec(), {"scans.csv": scans})
    trainer = start_trainer(data_volume, repository, mlflow_tracking_uri=uri)
    try:
        tracked = train(trainer, "tracked")[-1]
        assert tracked.state == trainer_pb2.JOB_STATE_SUCCEEDED, tracked.message
        with monkeypatch.context() as without:  # MLflow is not installed: importing it fails
            for module in ("mlflow", "mlflow.tracking", "mlflow.entities"):
                without.setitem(sys.modules, module, None)
            untracked = train(trainer, "untracked")[-1]
        assert untracked.state == trainer_pb2.JOB_STATE_SUCCEEDED, untracked.message
        history = trainer.stub.History(
            trainer_pb2.HistoryRequest(dataset="untracked", event_types=["TRAINING_COMPLETED"])
        ).events
    finally:
        trainer.close()

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("oddity/tracked")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["oddity.job_id"] == tracked.id and run.data.tags["oddity.version"] == "1"
    params = run.data.params
    assert params["kind"] == "mlp_classifier" and params["params.epochs"] == str(EPOCHS)
    assert (params["label"], params["score_column"], params["samples"]) == ("grade", "quality", str(len(scans)))

    manifest = bundle.load_verified_version(repository, "tracked", 1).manifest
    evaluation = manifest.groups[0].evaluation
    assert run.data.metrics["balanced_accuracy"] == evaluation.balanced_accuracy
    assert run.data.metrics["score_mae"] == evaluation.score_mae
    for name in ("train_loss", "validation_loss", "validation_balanced_accuracy", "learning_rate"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, name)]
        assert steps == list(range(1, EPOCHS + 1)), name

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert artifacts == {"model/all.onnx", "model/manifest.json"}
    graph = client.download_artifacts(run.info.run_id, "model/all.onnx", str(tmp_path / "download"))
    with open(graph, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == manifest.groups[0].sha256  # what serves

    # Without MLflow: no run, and the history holds every figure (and every epoch).
    assert client.get_experiment_by_name("oddity/untracked") is None
    (completed,) = history
    details = json.loads(completed.details_json)
    untracked_manifest = bundle.load_verified_version(repository, "untracked", 1).manifest
    assert details["metrics"]["balanced_accuracy"] == untracked_manifest.groups[0].evaluation.balanced_accuracy
    assert [e["epoch"] for e in details["epochs"]["all"]] == list(range(1, EPOCHS + 1))
