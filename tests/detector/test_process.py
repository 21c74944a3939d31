"""The detector as a process: graceful SIGTERM under load, and flat memory across swaps."""

import threading
import time
import urllib.request

import grpc
import numpy as np
import psutil
import pytest

from oddity.trainer import bundle_writer
from oddity.v1 import detector_pb2, detector_pb2_grpc
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel
from tests.support.waiting import wait_for


def in_flight(process: ServiceProcess) -> float:
    url = f"http://127.0.0.1:{process.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("oddity_grpc_requests_in_flight") and 'method="Detect"' in line:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def publish_heavy(repository, d=64, hidden=(2048, 2048)):
    """A slow model, so that requests are still running when SIGTERM arrives."""
    graph = models.random_autoencoder(d, hidden)
    fitted = models.timing_group(graph)
    models.publish_simple(repository, "heavy", fitted, dimension=d)


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_exits_zero(repository):
    publish_heavy(repository)
    process = ServiceProcess(
        "oddity.detector.main",
        ["--model-repository", str(repository), "--grace-period-seconds", "30", "--inference-workers", "1"],
    ).start()
    process.wait_ready("oddity.v1.Detector")
    try:
        rows = np.random.default_rng(0).normal(size=(3000, 64)).astype(np.float32)
        results: list[object] = []
        with channel(process.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            stub.Detect(detect_request("heavy", rows[:1]), timeout=30)
            futures = [stub.Detect.future(detect_request("heavy", rows), timeout=60) for _ in range(4)]
            wait_for(lambda: in_flight(process) >= 4, what="the requests to reach the server")
            process.proc.send_signal(15)
            for future in futures:
                try:
                    results.append(future.result())
                except grpc.RpcError as exc:
                    results.append(exc)
        assert process.proc.wait(timeout=60) == 0
        assert all(isinstance(r, detector_pb2.DetectResponse) and len(r.scores) == 3000 for r in results), results
        assert process.events("stopped"), "no graceful stop in the log"
    finally:
        process.kill()


@pytest.mark.slow
def test_calls_after_sigterm_get_unavailable_never_cancelled(repository):
    """Clients keep calling through the signal: calls in progress finish OK, calls that arrive
    while the server drains get UNAVAILABLE (what retry policies retry), none CANCELLED.

    The light clients stop once each has seen its UNAVAILABLEs, while the heavy calls still
    run: a call that reaches gRPC core in the moment of the final stop, before the server has
    taken it, is cancelled by gRPC core itself (grpc/grpc issue 41785); the drain stops when no
    call is on its way (tests/common/test_drain.py measures it under 16 busy callers)."""
    publish_heavy(repository)
    process = ServiceProcess(
        "oddity.detector.main",
        ["--model-repository", str(repository), "--grace-period-seconds", "30", "--inference-workers", "1"],
    ).start()
    process.wait_ready("oddity.v1.Detector")
    try:
        heavy_rows = np.random.default_rng(0).normal(size=(6000, 64)).astype(np.float32)
        codes: list[grpc.StatusCode] = []
        refusals_each = 5

        def light_client() -> None:
            refused = 0
            with channel(process.target) as ch:
                stub = detector_pb2_grpc.DetectorStub(ch)
                request = detect_request("heavy", heavy_rows[:1])
                while refused < refusals_each:
                    try:
                        stub.Detect(request, timeout=30)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as exc:
                        codes.append(exc.code())
                        refused += 1
                        time.sleep(0.01)

        with channel(process.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            heavy = [stub.Detect.future(detect_request("heavy", heavy_rows), timeout=60) for _ in range(3)]
            wait_for(lambda: in_flight(process) >= 3, what="the requests to reach the server")
            clients = [threading.Thread(target=light_client) for _ in range(4)]
            for thread in clients:
                thread.start()
            wait_for(lambda: codes.count(grpc.StatusCode.OK) >= 4, what="light calls answered before the signal")
            process.proc.send_signal(15)
            for thread in clients:
                thread.join(timeout=60)
            assert not all(f.done() for f in heavy), "the heavy calls ended before the light clients saw the drain"
            assert process.proc.wait(timeout=60) == 0
            assert [len(f.result().scores) for f in heavy] == [6000, 6000, 6000]
        assert codes.count(grpc.StatusCode.UNAVAILABLE) == 4 * refusals_each
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, sorted(set(codes), key=str)
    finally:
        process.kill()


@pytest.mark.slow
def test_memory_stays_flat_across_swaps(repository):
    d = 769
    fitted = [models.timing_group(models.random_autoencoder(d, (256, 64, 256), seed=s)) for s in range(2)]
    models.publish_simple(repository, "mem", fitted[0], dimension=d)
    process = ServiceProcess(
        "oddity.detector.main", ["--model-repository", str(repository), "--poll-interval-seconds", "60"]
    ).start()
    process.wait_ready("oddity.v1.Detector")
    rows = np.random.default_rng(0).normal(size=(64, d)).astype(np.float32)
    try:
        rss = psutil.Process(process.proc.pid)
        with channel(process.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)

            def cycle(i: int) -> None:
                version = models.publish_simple(repository, "mem", fitted[i % 2], dimension=d)
                assert (
                    stub.LoadModel(detector_pb2.LoadModelRequest(model="mem"), timeout=30).status.serving_version
                    == version
                )
                assert stub.Detect(detect_request("mem", rows), timeout=30).model_version == version
                bundle_writer.prune_versions(repository / "mem", keep=3)  # as the trainer's retention does

            for i in range(30):  # warm-up: allocator pools and ORT arenas reach their steady size
                cycle(i)
            baseline = rss.memory_info().rss
            for i in range(200):
                cycle(i)
            final = rss.memory_info().rss
        growth = (final - baseline) / baseline
        print(f"rss baseline {baseline / 2**20:.1f} MiB, after 200 swaps {final / 2**20:.1f} MiB ({growth:+.1%})")
        assert growth < 0.10
    finally:
        process.kill()


def test_json_logs_carry_request_id_model_and_version(repository):
    fit = models.fit_pca_group(models.normal_rows(300, 4), components=1)
    models.publish_simple(repository, "logged", fit, dimension=4)
    process = ServiceProcess("oddity.detector.main", ["--model-repository", str(repository)]).start()
    try:
        process.wait_ready("oddity.v1.Detector")
        with channel(process.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            with pytest.raises(grpc.RpcError):
                stub.Detect(
                    detect_request("logged", np.zeros((1, 3), np.float32)), metadata=[("x-request-id", "abc-123")]
                )
        event = wait_for(
            lambda: next((e for e in process.events("request failed") if e.get("request_id") == "abc-123"), None),
            timeout=10,
            what="the failed request's log line",
        )
        assert event["model"] == "logged" and event["version"] == 1 and event["rpc"] == "Detect"
        assert event["code"] == "INVALID_ARGUMENT" and "expects 4" in event["error"]
        assert event["service"] == "detector" and event["level"] == "warning" and "timestamp" in event
        loaded = process.events("version loaded")
        assert loaded and loaded[0]["model"] == "logged"
    finally:
        process.kill()
