"""Detect on a real server: scores, normalization, thresholds, routing, explanations."""

import grpc
import numpy as np
import pytest

from oddity.v1 import detector_pb2, manifest_pb2
from tests.support import models
from tests.support.client import detect_request

D = 8
FEATURES = [f"f{i}" for i in range(D)]


@pytest.fixture(scope="module")
def fitted():
    return models.fit_pca_group(models.normal_rows(3000, D, seed=1), components=2)


@pytest.fixture
def serving(repository, fitted, detector):
    models.publish_simple(repository, "sensors", fitted, dimension=D, feature_names=FEATURES)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="sensors"))
    return detector


def test_scores_match_the_onnx_model_and_the_manifest(serving, fitted):
    rows = models.normal_rows(50, D, seed=7)
    response = serving.stub.Detect(detect_request("sensors", rows))
    expected = models.score_with_onnx(fitted.onnx, rows)
    assert response.model == "sensors" and response.model_version == 1 and response.kind == "autoencoder"
    np.testing.assert_allclose(response.scores, expected, rtol=1e-5)
    assert list(response.thresholds) == [pytest.approx(fitted.threshold)] * 50
    assert list(response.is_anomaly) == [bool(s > fitted.threshold) for s in response.scores]
    assert set(response.groups) == {"all"} and not any(response.fallback)
    assert all(0.0 <= c <= 1.0 for c in response.confidences)


def test_anomalies_score_high(serving):
    normal = models.normal_rows(200, D, seed=8)
    broken = normal.copy()
    broken[:, 0] += 4 * normal[:, 0].std()  # breaks the correlations the model learned
    response = serving.stub.Detect(detect_request("sensors", np.vstack([normal, broken])))
    flags = np.array(response.is_anomaly)
    assert flags[:200].mean() < 0.15
    assert flags[200:].mean() > 0.9
    normalized = np.array(response.normalized_scores)
    assert normalized[200:].min() >= 0.95


def test_normalized_score_is_monotone_in_the_raw_score(serving):
    rows = np.vstack([models.normal_rows(400, D, seed=9), models.normal_rows(100, D, seed=10) * 3])
    response = serving.stub.Detect(detect_request("sensors", rows))
    order = np.argsort(response.scores)
    normalized = np.array(response.normalized_scores)[order]
    assert np.all(np.diff(normalized) >= 0)
    assert normalized.min() >= 0.0 and normalized.max() <= 1.0


@pytest.mark.parametrize("percentile", [80.0, 90.0, 99.0])
def test_request_percentile_flags_the_matching_share_of_heldout_rows(repository, detector, percentile):
    rows = models.normal_rows(6000, D, seed=11)
    fit = models.fit_pca_group(rows, components=3)
    models.publish_simple(repository, "p", fit, dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="p"))
    heldout = rows[np.random.default_rng(0).permutation(len(rows))[int(len(rows) * 0.8) :]]
    response = detector.stub.Detect(detect_request("p", heldout, threshold_percentile=percentile))
    rate = np.mean(response.is_anomaly)
    assert rate == pytest.approx((100 - percentile) / 100, abs=0.01)
    assert list(response.thresholds) == [pytest.approx(np.percentile(fit.heldout_scores, percentile), rel=1e-3)] * len(
        heldout
    )
    # The manifest itself is untouched: the next request uses its 95th percentile again.
    default = detector.stub.Detect(detect_request("p", heldout))
    assert np.mean(default.is_anomaly) == pytest.approx(0.05, abs=0.01)


def test_feature_names_are_checked_and_reordered(serving):
    rows = models.normal_rows(5, D, seed=12)
    plain = serving.stub.Detect(detect_request("sensors", rows))
    named = serving.stub.Detect(detect_request("sensors", rows, feature_names=FEATURES))
    permutation = list(reversed(range(D)))
    shuffled = serving.stub.Detect(
        detect_request("sensors", rows[:, permutation], feature_names=[FEATURES[i] for i in permutation])
    )
    np.testing.assert_allclose(named.scores, plain.scores)
    np.testing.assert_allclose(shuffled.scores, plain.scores, rtol=1e-6)


def test_explanations_name_the_broken_feature(serving):
    rows = models.normal_rows(20, D, seed=13)
    rows[:, 5] += 25.0
    response = serving.stub.Detect(detect_request("sensors", rows, explain_top_k=3))
    assert len(response.explanations) == 20
    for explanation in response.explanations:
        features = explanation.features
        assert len(features) == 3
        assert features[0].name == "f5" and features[0].index == 5
        assert features[0].contribution >= features[1].contribution >= features[2].contribution
        assert 0 < sum(f.contribution for f in features) <= 1 + 1e-9


def test_repeated_float_rows_are_accepted(serving):
    rows = models.normal_rows(2, D, seed=14)
    request = detector_pb2.DetectRequest(model="sensors")
    request.rows.shape.extend([2, D])
    request.rows.values.extend(rows.ravel().tolist())
    response = serving.stub.Detect(request)
    np.testing.assert_allclose(response.scores, serving.stub.Detect(detect_request("sensors", rows)).scores)


# -- routing ---------------------------------------------------------------------------


def test_rows_are_scored_by_their_group(routed):
    detector, fits, young, older = routed
    rows = np.vstack([young[:3], older[:3]])
    response = detector.stub.Detect(detect_request("drawings", rows, routing_values=[4, 5, 3, 6, 8.9, 7]))
    assert list(response.groups) == ["age_3_6"] * 3 + ["age_6_9"] * 3
    assert not any(response.fallback)
    np.testing.assert_allclose(response.scores[:3], models.score_with_onnx(fits["age_3_6"].onnx, rows[:3]), rtol=1e-5)
    np.testing.assert_allclose(response.scores[3:], models.score_with_onnx(fits["age_6_9"].onnx, rows[3:]), rtol=1e-5)
    assert (
        list(response.thresholds)
        == [pytest.approx(fits["age_3_6"].threshold)] * 3 + [pytest.approx(fits["age_6_9"].threshold)] * 3
    )


def test_a_group_without_a_model_falls_back_to_all(routed):
    detector, _, young, _ = routed
    response = detector.stub.Detect(detect_request("drawings", young[:4], routing_values=[12, 10, 4, 99]))
    assert list(response.groups) == ["all", "all", "age_3_6", "all"]
    assert list(response.fallback) == [True, True, False, True]


def test_one_routing_value_applies_to_every_row(routed):
    detector, _, young, _ = routed
    response = detector.stub.Detect(detect_request("drawings", young[:3], routing_values=[7]))
    assert list(response.groups) == ["age_6_9"] * 3 and not any(response.fallback)


def test_a_routed_model_without_routing_values_says_all_scored_in_fallback(routed):
    detector, _, young, _ = routed
    before = detector.metric("oddity_detector_fallback_rows_total", model="drawings")
    response = detector.stub.Detect(detect_request("drawings", young[:3]))
    assert list(response.groups) == ["all"] * 3
    assert list(response.fallback) == [True, True, True]
    assert detector.metric("oddity_detector_fallback_rows_total", model="drawings") == before + 3


def test_no_active_group_and_no_fallback_is_a_failed_precondition(repository, detector):
    fit = models.fit_pca_group(models.normal_rows(500, D), components=2)
    groups = {
        "age_3_6": (models.group_proto("age_3_6", fit, lower=3, upper=6), fit.onnx),
        "age_6_9": (
            models.group_proto("age_6_9", None, lower=6, upper=9, status=manifest_pb2.GROUP_STATUS_INSUFFICIENT_DATA),
            None,
        ),
    }
    models.publish(repository, "strict", groups, dimension=D, routing_key="age")
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="strict"))
    rows = models.normal_rows(2, D)
    with pytest.raises(grpc.RpcError) as info:
        detector.stub.Detect(detect_request("strict", rows, routing_values=[4, 7]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "row 1: group 'age_6_9'" in info.value.details() and "GROUP_STATUS_INSUFFICIENT_DATA" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        detector.stub.Detect(detect_request("strict", rows, routing_values=[4, 20]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "age=20 is outside every group" in info.value.details()
    assert len(detector.stub.Detect(detect_request("strict", rows, routing_values=[4])).scores) == 2
