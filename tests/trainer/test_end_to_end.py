"""Trainer and detector on temporary volumes: a dropped CSV becomes a serving model with no
manual call, appended rows become a new version, anomalies are flagged."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from oddity.common import bundle
from oddity.v1 import detector_pb2, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.client import detect_request
from tests.support.waiting import wait_for


def serving_version(detector, model: str) -> int:
    models = detector.stub.ListModels(detector_pb2.ListModelsRequest()).models
    return next((m.serving_version for m in models if m.name == model), 0)


@pytest.fixture
def stack(data_volume, repository):
    detector = start_detector(repository, poll_interval_seconds=1.0)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    yield trainer, detector
    trainer.close()
    detector.close()


@pytest.mark.slow
def test_dropped_csv_is_trained_published_and_served(stack, data_volume):
    trainer, detector = stack
    normal = datasets.sensor_frame(3000, seed=0)
    spec = {"sources": [{"path": "*.csv"}], "retrain": {"policy": "on_change", "debounce_seconds": 0.2}}
    folder = datasets.write_dataset(data_volume, "sensors", spec, {"normal.csv": normal})
    wait_for(lambda: serving_version(detector, "sensors") == 1, what="version 1 in the detector")

    # More rows arrive: the trainer notices, trains again, the detector swaps.
    more = datasets.sensor_frame(1000, seed=5)
    more.to_csv(folder / "normal.csv", mode="a", header=False, index=False)
    wait_for(lambda: serving_version(detector, "sensors") == 2, what="version 2 in the detector")

    test_normal = datasets.sensor_frame(500, seed=42)
    unusual = datasets.anomalies(datasets.sensor_frame(500, seed=43))
    rows = np.vstack([test_normal.to_numpy(), unusual.to_numpy()]).astype(np.float32)
    response = detector.stub.Detect(detect_request("sensors", rows, feature_names=list(normal.columns)))
    truth = np.r_[np.zeros(500), np.ones(500)]
    auc = roc_auc_score(truth, response.normalized_scores)
    assert auc >= 0.95, f"ROC-AUC {auc:.3f}"
    assert np.mean(response.is_anomaly[:500]) < 0.12
    events = trainer.stub.History(trainer_pb2.HistoryRequest(dataset="sensors")).events
    published = [int(e.details["version"]) for e in events if e.event_type == "PUBLISHED"]
    assert published == [1, 2]
    completed = [e for e in events if e.event_type == "TRAINING_COMPLETED"][-1]
    assert completed.details["samples"] == 4000
    assert completed.details["metrics"]["parity_max_abs_diff"] < 1e-3
    manifest = detector.stub.GetModel(detector_pb2.GetModelRequest(model="sensors")).manifest
    assert manifest.kind == "auto" and list(manifest.feature_names) == list(normal.columns)
    assert (
        manifest.data_fingerprint
        == trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="sensors")).datasets[0].data_fingerprint
    )


@pytest.mark.slow
def test_isolation_forest_serves_on_the_same_scale(stack, data_volume):
    _, detector = stack
    normal = datasets.sensor_frame(2000, seed=3)
    spec = datasets.autoencoder_spec(model={"kind": "isolation_forest", "params": {"n_estimators": 50}})
    datasets.write_dataset(data_volume, "forest", spec, {"normal.csv": normal})
    wait_for(lambda: serving_version(detector, "forest") == 1, what="isolation forest in the detector")
    # Isolation forests find shifted clusters; broken correlations inside the usual ranges
    # are the autoencoder's strength, so only the shifted half is asked of the forest here.
    shifted = datasets.anomalies(datasets.sensor_frame(600, seed=8)).iloc[:300]
    rows = np.vstack([datasets.sensor_frame(300, seed=9).to_numpy(), shifted.to_numpy()]).astype(np.float32)
    response = detector.stub.Detect(detect_request("forest", rows))
    assert response.kind == "isolation_forest"
    normalized = np.array(response.normalized_scores)
    assert normalized.min() >= 0 and normalized.max() <= 1
    assert roc_auc_score(np.r_[np.zeros(300), np.ones(300)], normalized) >= 0.95
    assert np.mean(response.is_anomaly[:300]) < 0.15


def decision_log(n: int, seed: int) -> pd.DataFrame:
    """A device's rendering decisions: the level of detail follows from the readings."""
    rng = np.random.default_rng(seed)
    log = pd.DataFrame(
        {
            "frustumCoverage": rng.uniform(0, 1, n),
            "occlusionRatio": rng.uniform(0, 1, n),
            "meanVisibleDistance": rng.uniform(1, 100, n),
            "deviceFPS": rng.uniform(20, 120, n),
            "deviceCPULoad": rng.uniform(0, 1, n),
        }
    )
    quality = log.deviceFPS / 120 - log.deviceCPULoad + log.frustumCoverage - log.meanVisibleDistance / 200
    log["decisionLOD"] = np.select([quality > 0.4, quality > -0.1], ["high", "medium"], "low")
    return log


@pytest.mark.slow
def test_classifier_serves_classes_and_probabilities(stack, data_volume, repository):
    trainer, detector = stack
    spec = {
        "sources": [{"path": "decisions.csv"}],
        "features": ["frustumCoverage", "occlusionRatio", "meanVisibleDistance", "deviceFPS", "deviceCPULoad"],
        "label": "decisionLOD",
        "model": {"kind": "random_forest"},
        "min_samples": 100,
        "retrain": {"policy": "on_change", "debounce_seconds": 0.2},
    }
    datasets.write_dataset(data_volume, "lod", spec, {"decisions.csv": decision_log(1500, seed=0)})
    wait_for(lambda: serving_version(detector, "lod") == 1, what="classifier in the detector")

    # Quality is measured on rows the model never saw: a separate labelled log.
    held_out = decision_log(600, seed=1)
    features = held_out.drop(columns="decisionLOD").to_numpy(np.float32)
    response = detector.stub.Detect(detect_request("lod", features))
    assert sorted(response.class_labels) == ["high", "low", "medium"]
    probabilities = np.frombuffer(response.probabilities.raw_data, np.float32).reshape(600, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    predicted = np.array(response.predicted_classes)
    truth = held_out.decisionLOD.to_numpy()
    assert np.mean(predicted == truth) > 0.8
    recalls = [np.mean(predicted[truth == c] == c) for c in ("high", "medium", "low")]
    assert np.mean(recalls) > 0.75  # balanced accuracy
    assert not response.scores and not response.is_anomaly  # anomaly columns stay empty for classifiers

    # The reported metrics come from the trainer's held-out rows (20%, not used for fitting).
    group = bundle.load_verified_version(repository, "lod", 1).manifest.groups[0]
    assert (group.train_samples, group.validation_samples) == (1200, 300)
    completed = next(
        e
        for e in trainer.stub.History(trainer_pb2.HistoryRequest(dataset="lod")).events
        if e.event_type == "TRAINING_COMPLETED"
    )
    assert completed.details["metrics"]["accuracy"] == pytest.approx(group.metrics["accuracy"])
    assert completed.details["metrics"]["accuracy"] > 0.8
    assert completed.details["metrics"]["balanced_accuracy"] > 0.75


@pytest.mark.slow
def test_file_events_train_a_new_dataset_on_a_relative_data_volume(data_volume, repository):
    # As `oddity-trainer --data-volume volumes/data` runs it: file events (not the periodic scan,
    # set far off here) must reach datasets under a relative path.
    relative = Path(os.path.relpath(data_volume))
    assert not relative.is_absolute()
    trainer = start_trainer(relative, repository, force_polling=False, scan_interval_seconds=3600)
    try:
        spec = {"sources": [{"path": "*.csv"}], "retrain": {"debounce_seconds": 0.2}}
        datasets.write_dataset(data_volume, "relative", spec, {"rows.csv": datasets.sensor_frame(300)})
        wait_for(lambda: bundle.list_versions(repository / "relative") == [1], timeout=60, what="a version from events")
    finally:
        trainer.close()
