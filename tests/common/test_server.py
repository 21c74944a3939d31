"""The shared bootstrap on a real detector: health (liveness and readiness), reflection,
request ids, the /metrics endpoint and settings from flags and env vars."""

import subprocess
import sys
import time

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from oddity.common.settings import load_settings
from oddity.detector.settings import DetectorSettings
from oddity.v1 import detector_pb2
from tests.support import models
from tests.support.client import detect_request

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(detector, service: str) -> int:
    return health_pb2_grpc.HealthStub(detector.channel).Check(health_pb2.HealthCheckRequest(service=service)).status


def test_liveness_at_once_readiness_once_a_model_serves(repository, detector):
    assert health(detector, "") == SERVING
    assert health(detector, "oddity.v1.Detector") == NOT_SERVING
    fit = models.fit_pca_group(models.normal_rows(300, 4), components=1)
    models.publish_simple(repository, "m", fit, dimension=4)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    assert health(detector, "oddity.v1.Detector") == SERVING
    detector.stub.UnloadModel(detector_pb2.UnloadModelRequest(model="m"))
    assert health(detector, "oddity.v1.Detector") == NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        health(detector, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services_and_describes_each(detector):
    stub = reflection_pb2_grpc.ServerReflectionStub(detector.channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert names == {
        "oddity.v1.Detector",
        "inference.GRPCInferenceService",  # the Open Inference Protocol, its descriptors in a pool of their own
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    for service, file in [
        ("oddity.v1.Detector", "oddity/v1/detector.proto"),
        ("inference.GRPCInferenceService", "oddity/oip/grpc_predict_v2.proto"),
    ]:
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
        (answer,) = stub.ServerReflectionInfo(iter([request]))
        described = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in answer.file_descriptor_response.file_descriptor_proto
        ]
        assert file in [d.name for d in described], service


def test_metrics_count_requests_by_status_code(repository, detector):
    fit = models.fit_pca_group(models.normal_rows(300, 4), components=1)
    models.publish_simple(repository, "m", fit, dimension=4)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    for _ in range(3):
        detector.stub.Detect(detect_request("m", models.normal_rows(5, 4)))
    with pytest.raises(grpc.RpcError):
        detector.stub.Detect(detect_request("missing", models.normal_rows(1, 4)))
    labels = {"service": "oddity.v1.Detector", "method": "Detect"}
    assert detector.metric("oddity_grpc_requests_total", code="OK", **labels) == 3
    assert detector.metric("oddity_grpc_requests_total", code="NOT_FOUND", **labels) == 1
    assert detector.metric("oddity_grpc_request_duration_seconds_count", **labels) == 4
    assert detector.metric("oddity_detector_rows_total", model="m") == 15
    assert detector.metric("oddity_detector_serving_version", model="m") == 1
    assert detector.metric("oddity_detector_model_loads_total", model="m", outcome="success") == 1


def test_internal_errors_do_not_leak_and_carry_the_request_id(repository, detector, monkeypatch):
    fit = models.fit_pca_group(models.normal_rows(300, 4), components=1)
    models.publish_simple(repository, "m", fit, dimension=4)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))

    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(detector.app.service, "list_models", broken)  # a bug, as it would surface
    with pytest.raises(grpc.RpcError) as info:
        detector.stub.ListModels(detector_pb2.ListModelsRequest(), metadata=[("x-request-id", "req-42")])
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in info.value.details()
    assert "request id req-42" in info.value.details()
    assert len(detector.stub.Detect(detect_request("m", models.normal_rows(1, 4))).scores) == 1


def test_a_call_refused_while_draining_says_when_to_retry(detector):
    """UNAVAILABLE with gRPC's retry pushback: retrying clients wait it out, first for
    `retry_after`, then, once the stop is planned, until after it."""
    admission = detector.server.host.admission

    async def drain() -> None:
        admission.start_draining(retry_after=0.25)

    planned = time.monotonic() + 60

    async def plan_stop() -> None:
        admission.retry_not_before(planned)

    def refusal() -> tuple[grpc.StatusCode, int]:
        with pytest.raises(grpc.RpcError) as info:
            detector.stub.ListModels(detector_pb2.ListModelsRequest())
        pushback = dict(info.value.trailing_metadata())["grpc-retry-pushback-ms"]
        return info.value.code(), int(pushback)

    detector.server.call(drain)
    assert refusal() == (grpc.StatusCode.UNAVAILABLE, 250)
    detector.server.call(plan_stop)
    before = time.monotonic()
    code, pushback = refusal()
    after = time.monotonic()
    assert code == grpc.StatusCode.UNAVAILABLE
    assert (planned - after) * 1000 <= pushback <= (planned - before) * 1000 + 1


def test_settings_from_flags_then_env_then_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("ODDITY_DETECTOR_POLL_INTERVAL_SECONDS", "7.5")
    monkeypatch.setenv("ODDITY_DETECTOR_PORT", "6000")
    settings = load_settings(DetectorSettings, ["--port", "6001", "--model-repository", str(tmp_path)])
    assert settings.port == 6001  # flag beats env
    assert settings.poll_interval_seconds == 7.5  # env beats default
    assert settings.model_repository == tmp_path
    assert settings.metrics_port == 9102
    monkeypatch.setenv("ODDITY_DETECTOR_PINNED_VERSIONS", '{"sensors": 3}')
    assert load_settings(DetectorSettings, []).pinned_versions == {"sensors": 3}


def test_bad_settings_are_refused_with_the_field_name():
    result = subprocess.run(
        [sys.executable, "-m", "oddity.detector.main", "--poll-interval-seconds", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "poll_interval_seconds" in result.stderr + result.stdout
