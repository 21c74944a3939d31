"""DetectImages across an embedder restart: the embedder stops and a new one comes up on the
same address while a client keeps sending images; the detector's embedder client waits for it
(within its deadline), so no call fails and the same detector scores images again afterwards."""

import threading
import time

import grpc
import numpy as np
import pytest

from oddity.embedder.app import EmbedderApp
from oddity.embedder.settings import EmbedderSettings
from oddity.v1 import detector_pb2, detector_pb2_grpc, embedder_pb2, embedder_pb2_grpc
from tests.conftest import LOOPBACK, ServiceHandle, start_detector
from tests.support import drawings, models
from tests.support.servers import channel, wait_models


def start_embedder_on(port: int, cache_dir, sources) -> ServiceHandle:
    settings = EmbedderSettings(**{**LOOPBACK, "port": port}, cache_dir=cache_dir, models=sources, default_model="vit")
    return ServiceHandle(EmbedderApp, settings, embedder_pb2_grpc.EmbedderStub)


@pytest.fixture
def vit(shared_encoders):
    return shared_encoders.only("vit")


@pytest.mark.slow
def test_detect_images_rides_over_an_embedder_restart(shared_encoders, repository, vit):
    first = start_embedder_on(0, shared_encoders.cache_dir, vit)
    second = detector = None
    try:
        wait_models(first, timeout=120)
        port = first.server.port
        models.publish_image_model(repository, first.stub.GetInfo(embedder_pb2.GetInfoRequest(model="vit")).models[0])
        detector = start_detector(repository, embedder=f"127.0.0.1:{port}", embedder_timeout_seconds=60)
        rng = np.random.default_rng(0)
        request = detector_pb2.DetectImagesRequest(
            model="pictures", images=[drawings.drawing(5.0, rng), drawings.drawing(8.0, rng)], routing_values=[5, 8]
        )
        answers: list[tuple[float, float]] = []  # (sent, answered) of every successful call
        failures: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            with channel(detector.server.target) as ch:
                stub = detector_pb2_grpc.DetectorStub(ch)
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        response = stub.DetectImages(request, timeout=90)
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code()}: {exc.details()}")
                        continue
                    assert len(response.result.scores) == 2
                    answers.append((sent, time.monotonic()))

        def answered_after(moment: float) -> bool:
            return any(sent > moment for sent, _ in answers)

        client = threading.Thread(target=traffic)
        client.start()
        try:
            assert wait(lambda: len(answers) >= 3, timeout=60), failures
            first.close()
            time.sleep(0.5)  # the outage: no embedder answers, calls wait for one
            restarted = time.monotonic()
            second = start_embedder_on(port, shared_encoders.cache_dir, vit)
            assert wait(lambda: answered_after(restarted), timeout=90), failures
        finally:
            stop.set()
            client.join(timeout=120)
        assert failures == []
        # The call in flight when the new embedder came up had waited through the outage.
        assert any(sent < restarted < answered for sent, answered in answers)
        assert second.metric("oddity_embedder_items_total", model="vit") > 0
    finally:
        if detector is not None:
            detector.close()
        if second is not None:
            second.close()
        first.close()


def wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
