"""The detector's /metrics after Detect calls with known anomalies: rows and anomalies by
model, group and version, the normalized-score histogram, the calibrated anomaly rate of the
serving version, and the size of scoring calls."""

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oddity.v1 import detector_pb2, manifest_pb2
from tests.support import models
from tests.support.client import detect_request

D = 6
MODEL = "kids"
YOUNG, OLDER = "age_3_6", "age_6_9"


@pytest.fixture(scope="module")
def fits():
    young = models.normal_rows(1500, D, seed=30)
    older = models.normal_rows(1500, D, seed=31, shift=3.0)
    return models.fit_pca_group(young, components=2), models.fit_pca_group(older, components=2, percentile=90)


def publish(repository, fits, older_percentile: float = 90.0, older_active: bool = True) -> int:
    fit_young, fit_older = fits
    older = (
        (models.group_proto(OLDER, fit_older, lower=6, upper=9, percentile=older_percentile), fit_older.onnx)
        if older_active
        else (
            models.group_proto(OLDER, None, lower=6, upper=9, status=manifest_pb2.GROUP_STATUS_INSUFFICIENT_DATA),
            None,
        )
    )
    groups = {YOUNG: (models.group_proto(YOUNG, fit_young, lower=3, upper=6), fit_young.onnx), OLDER: older}
    return models.publish(repository, MODEL, groups, dimension=D, routing_key="age")


def normal(fit, seed: int, shift: float, k: int) -> np.ndarray:
    """k rows of the group's own distribution that its threshold does not flag."""
    rows = models.normal_rows(200, D, seed=seed, shift=shift)
    return rows[models.score_with_onnx(fit.onnx, rows) < fit.threshold][:k]


def anomalous(seed: int, shift: float, k: int) -> np.ndarray:
    """k rows far off the groups' subspace: far above any threshold."""
    rows = models.normal_rows(k, D, seed=seed, shift=shift)
    return rows + 40.0 * np.where(np.arange(D) % 2, 1.0, -1.0).astype(np.float32)


def samples(detector, name: str) -> list:
    return [
        s
        for family in text_string_to_metric_families(detector.metrics_text())
        for s in family.samples
        if s.name == name
    ]


def test_rows_anomalies_scores_and_calls_by_model_group_and_version(repository, detector, fits):
    fit_young, _ = fits
    publish(repository, fits)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model=MODEL))
    requests = [
        # 7 normal and 3 anomalous rows of the young group
        (np.vstack([normal(fit_young, 40, 0.0, 7), anomalous(41, 0.0, 3)]), [4.0]),
        # one anomalous row of the older group: the one-row path
        (anomalous(42, 3.0, 1), [7.0]),
        # rows of both groups in one request: 2 normal young rows, 2 anomalous older rows
        (np.vstack([normal(fit_young, 43, 0.0, 2), anomalous(44, 3.0, 2)]), [4.0, 4.0, 7.0, 7.0]),
    ]
    normalized = []
    for rows, ages in requests:
        response = detector.stub.Detect(detect_request(MODEL, rows, routing_values=ages))
        expected = [age >= 6 or i >= 7 for i, age in enumerate(np.broadcast_to(ages, len(rows)))]
        assert list(response.is_anomaly) == expected
        normalized.extend(response.normalized_scores)

    def value(name, **labels):
        return detector.metric(name, model=MODEL, **labels)

    assert value("oddity_detector_rows_total", group=YOUNG, version="1") == 12
    assert value("oddity_detector_anomalies_total", group=YOUNG, version="1") == 3
    assert value("oddity_detector_rows_total", group=OLDER, version="1") == 3
    assert value("oddity_detector_anomalies_total", group=OLDER, version="1") == 3

    # Normal rows sit below 0.95 (p95 and p90 thresholds), the far-off rows above 0.999.
    assert sum(v < 0.95 for v in normalized) == 9 and sum(v > 0.999 for v in normalized) == 6
    for le in ("0.5", "0.75", "0.9", "0.95", "0.98", "0.99", "0.995", "0.999", "1.0", "+Inf"):
        assert value("oddity_detector_normalized_score_bucket", le=le) == sum(v <= float(le) for v in normalized)
    assert value("oddity_detector_normalized_score_count") == 15
    assert value("oddity_detector_normalized_score_sum") == pytest.approx(sum(normalized))

    # Sequential calls: one request per scoring call, with the request's rows.
    assert detector.metric("oddity_detector_batch_requests_count") == 3
    assert detector.metric("oddity_detector_batch_requests_sum") == 3
    assert detector.metric("oddity_detector_batch_rows_count") == 3
    assert detector.metric("oddity_detector_batch_rows_sum") == 15
    assert detector.metric("oddity_detector_batch_rows_bucket", le="1.0") == 1  # the one-row call
    assert detector.metric("oddity_detector_batch_rows_bucket", le="8.0") == 2


def test_expected_anomaly_rate_follows_the_serving_version(repository, detector, fits):
    fit_young, _ = fits
    publish(repository, fits)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model=MODEL))
    manifest = detector.stub.GetModel(detector_pb2.GetModelRequest(model=MODEL)).manifest
    for group in manifest.groups:
        expected = (100 - group.threshold_percentile) / 100
        assert detector.metric("oddity_detector_expected_anomaly_rate", model=MODEL, group=group.name) == expected
    assert detector.metric("oddity_detector_expected_anomaly_rate", model=MODEL, group=YOUNG) == 0.05
    assert detector.metric("oddity_detector_expected_anomaly_rate", model=MODEL, group=OLDER) == 0.1
    detector.stub.Detect(detect_request(MODEL, normal(fit_young, 50, 0.0, 2), routing_values=[4.0]))

    publish(repository, fits, older_percentile=80.0)  # version 2
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model=MODEL))
    assert detector.metric("oddity_detector_serving_version", model=MODEL) == 2
    assert detector.metric("oddity_detector_expected_anomaly_rate", model=MODEL, group=OLDER) == pytest.approx(0.2)
    detector.stub.Detect(detect_request(MODEL, normal(fit_young, 51, 0.0, 1), routing_values=[4.0]))
    assert detector.metric("oddity_detector_rows_total", model=MODEL, group=YOUNG, version="2") == 1
    # The version it replaced keeps its series (its last increments are still scraped).
    assert detector.metric("oddity_detector_rows_total", model=MODEL, group=YOUNG, version="1") == 2

    publish(repository, fits, older_active=False)  # version 3: the older group has no model
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model=MODEL))
    rates = {s.labels["group"]: s.value for s in samples(detector, "oddity_detector_expected_anomaly_rate")}
    assert rates == {YOUNG: 0.05}
    versions = {s.labels["version"] for s in samples(detector, "oddity_detector_rows_total")}
    assert versions == {"2"}  # version 1's series are gone, version 2's stay until the next swap

    detector.stub.UnloadModel(detector_pb2.UnloadModelRequest(model=MODEL))
    assert samples(detector, "oddity_detector_expected_anomaly_rate") == []
    assert detector.metric("oddity_detector_serving_version", model=MODEL) == 0
