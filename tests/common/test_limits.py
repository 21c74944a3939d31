"""Limits on real servers: beyond the concurrency cap a call is refused at once with
RESOURCE_EXHAUSTED while health stays SERVING; a client above its rate is refused and another
client is not; /metrics can require a token."""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oddity.common.interceptors import HandlerInterceptor, with_behavior
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request
from tests.support.waiting import wait_for

D = 4


class Gate(HandlerInterceptor):
    """Holds Detect calls inside the server until released: calls that are admitted and busy."""

    def __init__(self) -> None:
        self.entered = 0
        self.released = threading.Event()

    def wrap(self, method, handler):
        if not method.endswith("/Detect"):
            return handler

        async def held(request, context):
            self.entered += 1
            while not self.released.is_set():
                await asyncio.sleep(0.005)
            return await handler.unary_unary(request, context)

        return with_behavior(handler, held)


@pytest.fixture
def published(repository):
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    return repository


def test_beyond_the_concurrency_cap_calls_are_refused_at_once(published):
    gate = Gate()
    detector = start_detector(published, interceptors=[gate], max_concurrent_rpcs=2)
    try:
        request = detect_request("m", models.normal_rows(1, D))
        held = [detector.stub.Detect.future(request, timeout=60) for _ in range(2)]
        wait_for(lambda: gate.entered == 2, 30, "two calls admitted")

        with pytest.raises(grpc.RpcError) as busy:
            detector.stub.Detect(request, timeout=10)
        assert (busy.value.code(), busy.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "the server is busy (2 calls in progress)",
        )
        assert not any(f.done() for f in held), "the refusal waited for the calls in progress"
        health = health_pb2_grpc.HealthStub(detector.channel)
        check = health.Check(health_pb2.HealthCheckRequest(service="oddity.v1.Detector"), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING

        gate.released.set()
        assert [len(f.result().scores) for f in held] == [1, 1]
        assert len(detector.stub.Detect(request, timeout=10).scores) == 1
        refused = detector.metric(
            "oddity_grpc_requests_total", service="oddity.v1.Detector", method="Detect", code="RESOURCE_EXHAUSTED"
        )
        assert refused == 1
    finally:
        gate.released.set()
        detector.close()


def test_a_client_above_its_rate_is_refused_and_others_are_not(published, tmp_path):
    tokens = tmp_path / "read-tokens"
    tokens.write_text("dashboard:token-a\nbatch-job:token-b\n")
    detector = start_detector(published, read_tokens_file=tokens, rate_limit_per_client=0.2, rate_limit_burst=3)
    try:
        request = detect_request("m", models.normal_rows(1, D))
        a, b = (("authorization", "Bearer token-a"),), (("authorization", "Bearer token-b"),)
        for _ in range(3):
            assert len(detector.stub.Detect(request, metadata=a, timeout=10).scores) == 1
        with pytest.raises(grpc.RpcError) as limited:
            detector.stub.Detect(request, metadata=a, timeout=10)
        assert (limited.value.code(), limited.value.details()) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "rate limit of 0.2 requests per second exceeded",
        )
        assert len(detector.stub.Detect(request, metadata=b, timeout=10).scores) == 1
    finally:
        detector.close()


def admitted(detector, request, headers) -> int:
    """How many of the calls (one per metadata tuple) were answered; the rest must be refused
    by the rate limit."""
    answered = 0
    for metadata in headers:
        try:
            detector.stub.Detect(request, metadata=metadata, timeout=10)
            answered += 1
        except grpc.RpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.details()
    return answered


def test_random_authorization_headers_do_not_mint_buckets_without_tokens(published):
    """Without tokens the key is the caller's address: 300 calls, each with a header of its
    own, share one bucket (burst 10 at 0.01 a second: 10 admitted, whatever the headers say)."""
    detector = start_detector(published, rate_limit_per_client=0.01, rate_limit_burst=10)
    try:
        request = detect_request("m", models.normal_rows(1, D))
        headers = [(("authorization", f"Bearer random-{i}"),) for i in range(300)]
        assert admitted(detector, request, headers) == 10
    finally:
        detector.close()


def test_a_token_spelled_differently_is_still_the_same_client(published, tmp_path):
    """The key is the principal the token authenticates as: "bearer", "BEARER" and extra
    blanks are the same client, so they share its bucket."""
    tokens = tmp_path / "read-tokens"
    tokens.write_text("dashboard:token-a\n")
    detector = start_detector(published, read_tokens_file=tokens, rate_limit_per_client=0.01, rate_limit_burst=3)
    try:
        request = detect_request("m", models.normal_rows(1, D))
        spellings = ["Bearer token-a", "bearer token-a", "BEARER token-a", "Bearer   token-a  ", "bearer  token-a"]
        headers = [(("authorization", spelling),) for spelling in spellings * 4]
        assert admitted(detector, request, headers) == 3
    finally:
        detector.close()


def test_buckets_are_bounded_in_number():
    from oddity.common.limits import MAX_TRACKED_CLIENTS, RateLimiter

    limiter = RateLimiter(rate=1.0, burst=1)
    for i in range(MAX_TRACKED_CLIENTS + 500):
        limiter.allow(f"client-{i}")
    assert len(limiter._buckets) == MAX_TRACKED_CLIENTS
    assert "client-0" not in limiter._buckets  # the least recently seen went first


def test_the_metrics_endpoint_can_require_a_token(published, tmp_path):
    token_file = tmp_path / "metrics-token"
    token_file.write_text("prometheus:scr4pe\n")
    detector = start_detector(published, metrics_token_file=token_file)
    try:
        url = f"http://127.0.0.1:{detector.metrics_port}/metrics"
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
            assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": "Bearer scr4pe"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert "oddity_detector_serving_version" in response.read().decode()
    finally:
        detector.close()
