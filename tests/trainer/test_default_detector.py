"""The default detector (no `model` in dataset.yaml): trained through the trainer, served by
the detector, it ranks anomalies well, is calibrated on every training row by cross-fitting,
publishes small datasets, and shows its evidence in the manifest and in GetStatus."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from oddity.trainer.learners import make_anomaly_learner
from oddity.v1 import detector_pb2, manifest_pb2, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.client import detect_request
from tests.trainer.test_robustness import run_job


@pytest.fixture
def stack(data_volume, repository):
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target], watch=False)
    yield trainer, detector
    trainer.close()
    detector.close()


def default_spec() -> dict:
    # What a new user writes: sources only (manual, so the test decides when to train).
    return {"sources": [{"path": "*.csv"}], "retrain": {"policy": "manual"}}


def score(detector, model: str, rows: np.ndarray, columns: list[str]) -> detector_pb2.DetectResponse:
    return detector.stub.Detect(detect_request(model, rows.astype(np.float32), feature_names=columns))


def test_default_ranks_anomalies_and_shows_its_evidence(stack, data_volume):
    trainer, detector = stack
    normal = datasets.sensor_frame(1500, seed=0)
    datasets.write_dataset(data_volume, "plant", default_spec(), {"normal.csv": normal})
    job = run_job(trainer, "plant")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message

    columns = list(normal.columns)
    test_normal = datasets.sensor_frame(1000, seed=42).to_numpy()
    unusual = datasets.anomalies(datasets.sensor_frame(400, seed=43)).to_numpy()
    response = score(detector, "plant", np.vstack([test_normal, unusual]), columns)
    truth = np.r_[np.zeros(len(test_normal)), np.ones(len(unusual))]
    assert roc_auc_score(truth, response.scores) >= 0.95
    # Calibrated on out-of-fold scores: new normal rows are flagged near the intended 5%.
    flagged = float(np.mean(response.is_anomaly[: len(test_normal)]))
    assert 0.02 <= flagged <= 0.08, flagged

    manifest = detector.stub.GetModel(detector_pb2.GetModelRequest(model="plant")).manifest
    assert manifest.kind == "auto"
    group = manifest.groups[0]
    assert group.calibration.method == "cross_fit"
    assert group.calibration.rows == 1500 and group.calibration.folds == 5
    assert group.calibration.expected_anomaly_rate == pytest.approx(0.05)
    assert 0.03 <= group.calibration.cross_validated_anomaly_rate <= 0.07
    # A table: the recipe is kNN on standardized features, trimmed of the rows it scored highest.
    members = [(m.kind, json.loads(m.params_json)) for m in group.members]
    assert members == [("knn", {"metric": "euclidean", "k": 5})]
    assert group.members[0].weight == pytest.approx(1.0)
    assert group.selection == (
        "knn(euclidean): the default for a table (8 features, 100% distinct values per column); "
        "the 30 of 1500 rows it scored highest were left out of the fit"
    )
    # The same evidence through the trainer's GetStatus.
    status = trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="plant")).datasets[0]
    assert status.kind == "auto" and status.live_version == 1
    [live] = status.live_groups
    assert live.group == "all" and live.status == manifest_pb2.GROUP_STATUS_ACTIVE
    assert live.calibration == group.calibration
    assert list(live.members) == list(group.members)
    assert live.selection == group.selection

    # Explanations name the feature that was pushed out of range.
    row = test_normal[:1].copy()
    row[0, 3] += 8 * normal["sensor_3"].std()
    explained = detector.stub.Detect(detect_request("plant", row.astype(np.float32), explain_top_k=1))
    assert explained.explanations[0].features[0].name == "sensor_3"


def test_forty_five_rows_are_published_and_flag_what_they_should(stack, data_volume):
    trainer, detector = stack
    normal = datasets.sensor_frame(45, seed=7)
    spec = default_spec()  # the default min_samples (40) admits it
    datasets.write_dataset(data_volume, "small", spec, {"normal.csv": normal})
    job = run_job(trainer, "small")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    manifest = detector.stub.GetModel(detector_pb2.GetModelRequest(model="small")).manifest
    assert manifest.groups[0].calibration.rows == 45 and manifest.groups[0].calibration.folds == 10
    columns = list(normal.columns)
    test_normal = datasets.sensor_frame(400, seed=8).to_numpy()
    unusual = datasets.anomalies(datasets.sensor_frame(200, seed=9)).to_numpy()
    response = score(detector, "small", np.vstack([test_normal, unusual]), columns)
    truth = np.r_[np.zeros(len(test_normal)), np.ones(len(unusual))]
    raw_auc = roc_auc_score(truth, response.scores)
    assert raw_auc >= 0.9
    # Normalized scores keep the order of the most unusual rows (no wall of 1.0 above the
    # table's top): they rank exactly as the raw scores do, and stay below 1.
    assert roc_auc_score(truth, response.normalized_scores) == pytest.approx(raw_auc, abs=1e-9)
    assert max(response.normalized_scores) < 1.0


def duplicated_table(n: int, seed: int = 0) -> pd.DataFrame:
    """Counters and switches: 72 distinct rows repeated thousands of times, as in real logs."""
    rng = np.random.default_rng(seed)
    level = rng.integers(0, 12, n)
    return pd.DataFrame(
        {"level": level, "twice_level": 2 * level + rng.integers(0, 3, n), "switch": 100 * rng.integers(0, 2, n)}
    )


@pytest.mark.slow
def test_a_table_of_duplicated_rows_publishes_and_flags_a_new_row(stack, data_volume):
    """Ties decide kNN's scores here (every row has thousands of copies at distance 0): the
    graph must reproduce them and nothing may be left out for float32 rounding."""
    trainer, detector = stack
    rows = duplicated_table(6000)
    datasets.write_dataset(data_volume, "counters", default_spec(), {"log.csv": rows})
    job = run_job(trainer, "counters")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    group = detector.stub.GetModel(detector_pb2.GetModelRequest(model="counters")).manifest.groups[0]
    assert [(m.weight, m.note) for m in group.members] == [(1.0, "")]
    assert group.metrics["parity_max_abs_diff"] == 0.0

    seen = rows.iloc[:50].to_numpy(np.float32)
    unseen = np.array([[5, 30, 0], [11, 22, 50]], np.float32)  # a relation and a switch never seen
    response = score(detector, "counters", np.vstack([seen, unseen]), list(rows.columns))
    assert not any(response.is_anomaly[:50])
    assert list(response.is_anomaly[50:]) == [True, True]


def test_parity_is_judged_beyond_float32_rounding_on_tied_scores():
    """The learner-level check the gate runs: on heavily duplicated rows the auto kind keeps
    its member and the exported graph passes the gate's parity check."""
    from oddity.trainer import calibration, validation

    x = duplicated_table(5000, seed=1).to_numpy(np.float64)
    learner = make_anomaly_learner("auto", {"candidates": [{"kind": "knn", "params": {"metric": "cosine"}}]})
    learner.fit_cross_fitted(x, calibration.make_folds(len(x), 0))
    assert [m.note for m in learner.evidence()] == [""]
    sample = x[:2000]
    exported = validation.onnx_scores(validation.onnx_session(learner.to_onnx()), sample)
    framework = learner.anomaly_scores(sample)[0]
    validation.check_parity(exported, framework, 1e-3, learner.parity_allowance(sample))


def incident_export() -> tuple[pd.DataFrame, pd.DataFrame]:
    """1,900 normal rows and an incident: 100 rows pushed 4 deviations off."""
    normal = datasets.sensor_frame(1900, seed=0)
    return normal, datasets.sensor_frame(100, seed=5) + 4 * normal.std()


@pytest.mark.slow
def test_a_declared_contamination_is_trimmed_and_the_threshold_stays_the_specs(stack, data_volume):
    trainer, detector = stack
    normal, incident = incident_export()
    spec = {**default_spec(), "contamination": 0.05}
    datasets.write_dataset(data_volume, "dirty", spec, {"export.csv": pd.concat([normal, incident])})
    job = run_job(trainer, "dirty")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    group = detector.stub.GetModel(detector_pb2.GetModelRequest(model="dirty")).manifest.groups[0]
    # Taken over every row: shifting it by the declared share flagged 8.5% of new normal rows on
    # the development sets with 5% anomalous training rows (at p95), this 4.3%.
    assert group.threshold_percentile == 95.0
    assert group.selection.endswith("the 100 of 2000 rows it scored highest were left out of the fit")


def test_trimming_refits_without_the_rows_the_first_fit_scored_highest():
    normal, incident = incident_export()
    x = pd.concat([normal, incident]).to_numpy()
    untrimmed = make_anomaly_learner("auto", {"trim": 0.0}).fit(x)
    highest = set(np.argsort(untrimmed.out_of_fold_scores(x, np.zeros(len(x))), kind="stable")[-100:].tolist())
    trimmed = make_anomaly_learner("auto", {"trim": 0.05}).fit(x)
    [knn] = trimmed.learners_
    in_reference = (x[:, None, :] == knn.reference_source_[None, :, :]).all(axis=2).any(axis=1)
    kept = {int(i) for i in np.flatnonzero(in_reference)}
    assert kept == set(range(len(x))) - highest
    # More of the incident is left out than of the normal rows, but clustered rows mask each
    # other: 43 of the incident's 100 rows scored below the highest 100 and stay.
    assert len(highest & set(range(1900, 2000))) == 57
