"""Supervised heads through the real services: scanned documents graded Very Poor .. High in
the proportions users have them (10:1 between the largest and the smallest grade) with a
quality score next to each grade. Class weights and balanced batch sampling each lift the
balanced accuracy clearly above an unweighted model trained alongside; WatchJob streams every
epoch's losses and figures; GetStatus shows the held-out evaluation; the detector serves the
grade, calibrated probabilities and the quality score; a model worse than the live one is
refused by the gate."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from oddity.common import bundle
from oddity.v1 import detector_pb2, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.client import detect_request
from tests.support.waiting import wait_for
from tests.trainer.labelled_data import FEATURES, GRADES, graded_scans

EPOCHS = 40


def grades_spec(**params) -> dict:
    return {
        "sources": [{"path": "scans.csv"}],
        "features": FEATURES,
        "label": "grade",
        "score_column": "quality",
        "model": {"kind": "mlp_classifier", "params": {"epochs": EPOCHS, **params}},
        "min_samples": 100,
        "retrain": {"policy": "manual"},
    }


def train(trainer, dataset: str) -> list[trainer_pb2.Job]:
    """Every update WatchJob streams for a new job of `dataset`, the last one final."""
    job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset=dataset)).job
    return [u.job for u in trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=120)]


def serving_version(detector, model: str) -> int:
    models = detector.stub.ListModels(detector_pb2.ListModelsRequest()).models
    return next((m.serving_version for m in models if m.name == model), 0)


@pytest.fixture
def stack(data_volume, repository):
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    yield trainer, detector
    trainer.close()
    detector.close()


@pytest.mark.slow
def test_imbalanced_grades_are_learned_served_and_judged(stack, data_volume, repository):
    trainer, detector = stack
    scans = graded_scans(seed=0)
    variants = {
        "plain": {"class_weight": "none"},  # the baseline: every row counts the same
        "weighted": {"class_weight": "balanced"},  # the default
        "sampled": {"class_weight": "none", "sampler": "balanced"},
    }
    for name, params in variants.items():
        datasets.write_dataset(data_volume, name, grades_spec(**params), {"scans.csv": scans})
    updates = {name: train(trainer, name) for name in variants}
    for name, stream in updates.items():
        assert stream[-1].state == trainer_pb2.JOB_STATE_SUCCEEDED, stream[-1].message
        wait_for(lambda name=name: serving_version(detector, name) == 1, what=f"{name} in the detector")

    # WatchJob: each epoch's training and validation loss and its figures on the validation rows.
    epochs = [u for u in updates["weighted"] if u.phase == "training" and u.epoch > 0]
    assert epochs and all(u.total_epochs == EPOCHS for u in epochs)
    assert [u.epoch for u in epochs] == sorted({u.epoch for u in epochs})  # rising, each epoch once at most
    for update in epochs:
        assert update.train_loss > 0 and update.validation_loss > 0 and update.loss == update.validation_loss
        assert set(update.epoch_metrics) == {"validation_accuracy", "validation_balanced_accuracy", "learning_rate"}
        assert 0 < update.epoch_metrics["validation_balanced_accuracy"] <= 1

    # Scans never seen, in the same proportions: the detector's grades, probabilities and scores.
    fresh = graded_scans(scale=3.0, seed=11)
    rows = fresh[FEATURES].to_numpy(np.float32)
    balanced = {}
    for name in variants:
        response = detector.stub.Detect(detect_request(name, rows, feature_names=FEATURES))
        assert response.kind == "mlp_classifier" and sorted(response.class_labels) == sorted(GRADES)
        probabilities = np.frombuffer(response.probabilities.raw_data, np.float32).reshape(len(fresh), len(GRADES))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(response.confidences, probabilities.max(axis=1), atol=1e-6)
        assert len(response.predicted_scores) == len(fresh)
        assert np.mean(np.abs(np.array(response.predicted_scores) - fresh.quality.to_numpy())) < 12.0
        assert not response.scores and not response.is_anomaly
        balanced[name] = balanced_accuracy_score(fresh.grade, list(response.predicted_classes))
    assert balanced["weighted"] > balanced["plain"] + 0.08, balanced
    assert balanced["sampled"] > balanced["plain"] + 0.08, balanced

    # GetStatus shows the held-out evaluation the manifest records.
    manifest = bundle.load_verified_version(repository, "weighted", 1).manifest
    assert manifest.score_column == "quality"
    status = trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="weighted")).datasets[0]
    (group,) = status.live_groups
    evaluation = group.evaluation
    assert evaluation == manifest.groups[0].evaluation
    assert evaluation.rows == manifest.groups[0].validation_samples == int(len(scans) * 0.2)
    assert [c.label for c in evaluation.classes] == list(manifest.class_labels)
    assert [c.support for c in evaluation.classes] == [
        int(np.sum(evaluation.confusion_matrix[i * 5 : (i + 1) * 5])) for i in range(5)
    ]
    assert sum(evaluation.confusion_matrix) == evaluation.rows
    assert min(c.support for c in evaluation.classes) >= 2  # stratified: the rare grades are judged too
    assert evaluation.temperature > 0 and evaluation.calibration_bins == 15
    assert 0 < evaluation.ece_after_temperature < 0.5 and 0 < evaluation.ece_before_temperature < 0.5
    assert 0 < evaluation.score_mae < 12.0
    assert group.metrics["balanced_accuracy"] == pytest.approx(evaluation.balanced_accuracy)
    # Updates in a burst are coalesced, but the final snapshot keeps the last epoch run.
    assert max(u.epoch for u in updates["weighted"]) == group.metrics["epochs"] <= EPOCHS
    (completed,) = trainer.stub.History(
        trainer_pb2.HistoryRequest(dataset="weighted", event_types=["TRAINING_COMPLETED"])
    ).events
    assert completed.details["metrics"]["macro_f1"] == pytest.approx(evaluation.macro_f1)
    assert len(completed.details["epochs"]["all"]) == group.metrics["epochs"]


@pytest.mark.slow
def test_a_classifier_below_the_live_ones_balanced_accuracy_is_not_published(data_volume, repository):
    trainer = start_trainer(data_volume, repository)
    try:
        scans = graded_scans(seed=2)
        folder = datasets.write_dataset(data_volume, "grades", grades_spec(), {"scans.csv": scans})
        assert train(trainer, "grades")[-1].state == trainer_pb2.JOB_STATE_SUCCEEDED
        live = bundle.load_verified_version(repository, "grades", 1).manifest.groups[0].evaluation.balanced_accuracy

        # The same rows, a model that barely trains: refused, and version 1 keeps serving.
        crippled = grades_spec(epochs=1, learning_rate=1e-5, hidden=[2], class_weight="none")
        datasets.write_dataset(data_volume, "grades", crippled, {"scans.csv": scans})
        final = train(trainer, "grades")[-1]
        assert final.state == trainer_pb2.JOB_STATE_FAILED
        assert "below the live version's" in final.message and "balanced accuracy" in final.message
        assert f"{live:.3f}" in final.message
        assert bundle.complete_versions(repository, "grades") == [1]
        assert trainer.metric("oddity_trainer_jobs_total", dataset="grades", outcome="rejected") == 1
        assert (folder / "dataset.yaml").exists()
    finally:
        trainer.close()
