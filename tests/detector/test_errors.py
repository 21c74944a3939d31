"""Every bad input gets its status code and a message naming the problem; the server keeps
serving afterwards."""

import grpc
import numpy as np
import pytest

from oddity.v1 import detector_pb2, tensor_pb2
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request

D = 8
FEATURES = [f"f{i}" for i in range(D)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repository = tmp_path_factory.mktemp("errors") / "models"
    repository.mkdir()
    fit = models.fit_pca_group(models.normal_rows(1000, D), components=2)
    models.publish_simple(repository, "sensors", fit, dimension=D, feature_names=FEATURES)
    handle = start_detector(repository, max_rows_per_request=1000, max_message_bytes=1 << 20)
    yield handle
    handle.close()


def rows(n=3):
    return models.normal_rows(n, D, seed=3)


def with_nan():
    r = rows()
    r[2, 3] = np.nan
    return r


def with_inf():
    r = rows()
    r[1, 0] = np.inf
    return r


CASES = [
    ("unknown model", detect_request("nope", rows()), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    (
        "wrong dimension",
        detect_request("sensors", models.normal_rows(2, 5)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "rows have 5 features; model 'sensors' v1 expects 8",
    ),
    ("NaN", detect_request("sensors", with_nan()), grpc.StatusCode.INVALID_ARGUMENT, "row 2, feature 'f3' is nan"),
    ("Inf", detect_request("sensors", with_inf()), grpc.StatusCode.INVALID_ARGUMENT, "row 1, feature 'f0' is inf"),
    (
        "feature names",
        detect_request("sensors", rows(), feature_names=[*FEATURES[:-1], "pressure"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "feature_names do not match model 'sensors': missing ['f7']; unknown ['pressure']",
    ),
    (
        "feature name count",
        detect_request("sensors", rows(), feature_names=FEATURES[:3]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "3 feature_names for rows with 8 features",
    ),
    (
        "bytes do not fit the shape",
        detector_pb2.DetectRequest(
            model="sensors", rows=tensor_pb2.Tensor(shape=[2, D], raw_data=np.zeros(2 * D - 1, np.float32).tobytes())
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "rows.raw_data has 60 bytes; shape [2, 8] needs 64",
    ),
    ("no rows", detector_pb2.DetectRequest(model="sensors"), grpc.StatusCode.INVALID_ARGUMENT, "rows is empty"),
    (
        "too many rows",
        detect_request("sensors", np.zeros((1001, D), np.float32)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "request has 1001 rows; the limit is 1000",
    ),
    (
        "message too large",
        detect_request("sensors", np.zeros((1000, 300), np.float32)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "larger than max",
    ),
    (
        "percentile out of range",
        detect_request("sensors", rows(), threshold_percentile=100.0),
        grpc.StatusCode.INVALID_ARGUMENT,
        "threshold_percentile must lie in (0, 100), got 100.0",
    ),
    (
        "explain more features than exist",
        detect_request("sensors", rows(), explain_top_k=9),
        grpc.StatusCode.INVALID_ARGUMENT,
        "explain_top_k 9 exceeds the model's 8 features",
    ),
    (
        "version not serving",
        detect_request("sensors", rows(), version=4),
        grpc.StatusCode.NOT_FOUND,
        "version 4 of model 'sensors' is not serving (serving 1)",
    ),
]


@pytest.mark.parametrize(("name", "request_", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(server, name, request_, code, message):
    with pytest.raises(grpc.RpcError) as info:
        server.stub.Detect(request_, timeout=10)
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details()
    healthy = server.stub.Detect(detect_request("sensors", rows()), timeout=10)
    assert len(healthy.scores) == 3


def test_garbage_bytes_do_not_crash_the_server(server):
    raw = server.channel.unary_unary("/oddity.v1.Detector/Detect")
    for payload in (b"\xff\xff\xff\xff", b"\x1a\x05\x0a\x03\x08", bytes(range(256))):
        with pytest.raises(grpc.RpcError) as info:
            raw(payload, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request is not a valid protobuf message" in info.value.details()
    assert len(server.stub.Detect(detect_request("sensors", rows()), timeout=10).scores) == 3


def test_model_management_errors(server):
    cases = [
        (
            server.stub.GetModel,
            detector_pb2.GetModelRequest(model="nope"),
            grpc.StatusCode.NOT_FOUND,
            "'nope' not found",
        ),
        (server.stub.LoadModel, detector_pb2.LoadModelRequest(model="../etc"), grpc.StatusCode.NOT_FOUND, "not found"),
        (
            server.stub.LoadModel,
            detector_pb2.LoadModelRequest(model="sensors", version=9),
            grpc.StatusCode.NOT_FOUND,
            "version 9 of model 'sensors' not found",
        ),
        (
            server.stub.UnloadModel,
            detector_pb2.UnloadModelRequest(model="nope"),
            grpc.StatusCode.NOT_FOUND,
            "not loaded",
        ),
    ]
    for method, request, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            method(request, timeout=10)
        assert info.value.code() == code
        assert message in info.value.details()


def test_unavailable_until_the_repository_is_first_scanned(tmp_path):
    repository = tmp_path / "models"  # not there yet (a volume still mounting)
    handle = start_detector(repository)
    try:
        with pytest.raises(grpc.RpcError) as info:
            handle.stub.Detect(detect_request("sensors", rows()), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == (
            "the model repository has not been scanned yet (the detector is starting, or the repository is missing)"
        )
        repository.mkdir()
        handle.server.call(lambda: handle.service.refresh())
        with pytest.raises(grpc.RpcError) as info:
            handle.stub.Detect(detect_request("sensors", rows()), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "model 'sensors' not found"
    finally:
        handle.close()
