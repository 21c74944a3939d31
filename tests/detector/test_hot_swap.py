"""Versions are published while clients send Detect without pause: no request fails, every
new version serves within two poll intervals (at once after LoadModel), and each response
names the version that really scored it."""

import threading
import time

import grpc
import pytest

from oddity.v1 import detector_pb2, detector_pb2_grpc
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel
from tests.support.waiting import wait_for

D = 10
POLL = 0.5
VERSIONS = 10
CLIENTS = 4
ANSWERS_PER_VERSION = 30  # answers the clients get from each version before the next is published


@pytest.fixture
def detector_process(repository):
    process = ServiceProcess(
        "oddity.detector.main",
        ["--model-repository", str(repository), "--poll-interval-seconds", str(POLL), "--log-json"],
    ).start()
    yield process
    process.kill()


@pytest.mark.slow
def test_publish_under_load_loses_no_request(repository, detector_process):
    # Each version is a different model, so a score tells which version computed it.
    fits = [
        models.fit_pca_group(models.normal_rows(600, D, seed=v), components=1 + v % 3, seed=v) for v in range(VERSIONS)
    ]
    probe = models.normal_rows(1, D, seed=99) * 2
    expected = {v + 1: float(models.score_with_onnx(fit.onnx, probe)[0]) for v, fit in enumerate(fits)}
    assert len({round(s, 4) for s in expected.values()}) == VERSIONS

    models.publish_simple(repository, "live", fits[0], dimension=D)
    control = channel(detector_process.target)
    stub = detector_pb2_grpc.DetectorStub(control)
    stub.LoadModel(detector_pb2.LoadModelRequest(model="live"))

    stop = threading.Event()
    failures: list[str] = []
    seen: list[list[tuple[float, int, float]]] = [[] for _ in range(CLIENTS)]

    def client(index: int) -> None:
        with channel(detector_process.target) as ch:
            client_stub = detector_pb2_grpc.DetectorStub(ch)
            request = detect_request("live", probe)
            while not stop.is_set():
                try:
                    response = client_stub.Detect(request, timeout=10)
                except grpc.RpcError as exc:
                    failures.append(f"{exc.code()}: {exc.details()}")
                    continue
                seen[index].append((time.monotonic(), response.model_version, response.scores[0]))

    def answered(count: int) -> None:
        """Wait until the clients have had `count` more answers."""
        start = sum(len(s) for s in seen)
        wait_for(lambda: sum(len(s) for s in seen) >= start + count, what=f"{count} more answers")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    published: dict[int, float] = {}
    try:
        for v in range(2, VERSIONS + 1):
            answered(ANSWERS_PER_VERSION)
            assert models.publish_simple(repository, "live", fits[v - 1], dimension=D) == v
            published[v] = time.monotonic()
            if v % 3 == 0:  # every third version is pushed with LoadModel instead of waiting for a poll
                status = stub.LoadModel(detector_pb2.LoadModelRequest(model="live"), timeout=10).status
                assert status.serving_version == v
                assert stub.Detect(detect_request("live", probe), timeout=10).model_version == v
            else:
                deadline = published[v] + 2 * POLL
                while stub.Detect(detect_request("live", probe), timeout=10).model_version != v:
                    assert time.monotonic() < deadline, f"version {v} not serving within two poll intervals"
                    time.sleep(0.01)
        answered(ANSWERS_PER_VERSION)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        control.close()

    assert failures == []
    total = sum(len(s) for s in seen)
    assert total > 200
    for responses in seen:
        versions = [v for _, v, _ in responses]
        assert versions == sorted(versions), "a client went back to an older version"
        for _, version, score in responses:
            assert score == pytest.approx(expected[version], rel=1e-4), (
                f"response names v{version} but another scored it"
            )
    served = {v for responses in seen for _, v, _ in responses}
    assert served >= {1, VERSIONS}
