"""Micro-batching: concurrent requests coalesce into shared ONNX calls, every caller gets
exactly its own rows back, and a bad request in a batch fails alone."""

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from oddity.v1 import detector_pb2, manifest_pb2
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request

D = 6


@pytest.fixture
def routed(repository, detector):
    young, older = models.normal_rows(1500, D, seed=30), models.normal_rows(1500, D, seed=31, shift=3.0)
    fit_young, fit_older = models.fit_pca_group(young, components=2), models.fit_pca_group(older, components=2)
    groups = {
        "age_3_6": (models.group_proto("age_3_6", fit_young, lower=3, upper=6), fit_young.onnx),
        "age_6_9": (models.group_proto("age_6_9", fit_older, lower=6, upper=9), fit_older.onnx),
        "age_9_12": (
            models.group_proto("age_9_12", None, lower=9, upper=12, status=manifest_pb2.GROUP_STATUS_INSUFFICIENT_DATA),
            None,
        ),
    }
    models.publish(repository, "kids", groups, dimension=D, routing_key="age")
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="kids"))
    return detector, {"age_3_6": fit_young, "age_6_9": fit_older}


def test_concurrent_requests_each_get_their_own_rows(routed):
    detector, fits = routed
    rng = np.random.default_rng(0)
    requests = []
    for i in range(400):
        n = int(rng.integers(1, 4))
        age = [4.0, 7.0][i % 2]
        requests.append((models.normal_rows(n, D, seed=1000 + i), age))

    def call(item):
        rows, age = item
        return detector.stub.Detect(detect_request("kids", rows, routing_values=[age]), timeout=30)

    with ThreadPoolExecutor(max_workers=32) as pool:
        responses = list(pool.map(call, requests))
    for (rows, age), response in zip(requests, responses, strict=True):
        group = "age_3_6" if age < 6 else "age_6_9"
        assert list(response.groups) == [group] * len(rows)
        np.testing.assert_allclose(response.scores, models.score_with_onnx(fits[group].onnx, rows), rtol=1e-5)
    batches = detector.metric("oddity_detector_batch_requests_count")
    coalesced = detector.metric("oddity_detector_batch_requests_sum")
    assert coalesced == len(requests)
    assert batches < len(requests), "no two requests ever shared an ONNX call"


def test_a_bad_request_in_a_batch_fails_alone(routed):
    detector, _ = routed

    def call(i):
        age = 10.0 if i % 10 == 0 else 4.0  # every tenth request routes to a group without a model
        try:
            return detector.stub.Detect(detect_request("kids", models.normal_rows(1, D, seed=i), routing_values=[age]))
        except grpc.RpcError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(call, range(300)))
    for i, result in enumerate(results):
        if i % 10 == 0:
            assert isinstance(result, grpc.RpcError) and result.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "group 'age_9_12'" in result.details()
        else:
            assert isinstance(result, detector_pb2.DetectResponse), result
            assert list(result.groups) == ["age_3_6"]


def test_a_cancelled_request_leaves_its_batch_before_it_runs(repository):
    """A call whose deadline passes while its batch waits is not scored: the next batch holds
    only the next request."""
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    detector = start_detector(repository, max_batch_delay_ms=1000)
    try:
        request = detect_request("m", models.normal_rows(1, D))
        with pytest.raises(grpc.RpcError) as late:
            detector.stub.Detect(request, timeout=0.2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        time.sleep(1.0)  # the abandoned batch's flush time has passed
        assert detector.metric("oddity_detector_batch_requests_count") == 0
        assert len(detector.stub.Detect(request, timeout=10).scores) == 1
        assert detector.metric("oddity_detector_batch_requests_count") == 1
        assert detector.metric("oddity_detector_batch_requests_sum") == 1
    finally:
        detector.close()
