"""The table of models as requests see it: model folders come and go while clients list
models and ask for unknown ones, and nothing but the one right answer ever comes back;
unloading the only model makes it NOT_FOUND and the detector not ready, LoadModel undoes both."""

import json
import os
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from oddity.common.errors import NotFound
from oddity.v1 import detector_pb2, detector_pb2_grpc
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import channel

D = 4
FOLDERS = 200  # model folders that appear, then disappear
LIVE = 16  # of them present at once
READERS = 2  # gRPC client threads
READINESS = "oddity.v1.Detector"


@pytest.fixture(scope="module")
def fit():
    return models.fit_pca_group(models.normal_rows(300, D), components=1)


def readiness(detector) -> int:
    stub = health_pb2_grpc.HealthStub(detector.channel)
    return stub.Check(health_pb2.HealthCheckRequest(service=READINESS), timeout=10).status


def internal_answers(detector) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(detector.metrics_text())
        for sample in family.samples
        if sample.name == "oddity_grpc_requests_total" and sample.labels.get("code") == "INTERNAL"
    )


@pytest.mark.slow
def test_listing_and_unknown_models_while_folders_come_and_go(repository, tmp_path, fit, capfd):
    # Scans run on the poller and, forced, on the churn thread (LoadModel or the registry's
    # refresh); each replaces the table while the event loop reads it for every ListModels and
    # Detect, and a thread reads the registry directly without gRPC in between.
    staging, trash = tmp_path / "staging", tmp_path / "trash"
    staging.mkdir()
    trash.mkdir()
    for i in range(FOLDERS):
        models.publish_simple(staging, f"churn{i:03d}", fit, dimension=D)
    detector = start_detector(repository, poll_interval_seconds=0.05, warmup_batch_size=1, bulk_intra_op_threads=1)
    registry = detector.model_registry
    done = threading.Event()
    churn_errors: list[BaseException] = []
    wrong: list[str] = []
    rounds = [0] * READERS
    rows = models.normal_rows(1, D)

    def churn() -> None:
        stub = detector_pb2_grpc.DetectorStub(detector.channel)
        try:
            for i in range(FOLDERS):
                name = f"churn{i:03d}"
                os.rename(staging / name, repository / name)  # the folder appears at once
                if i % 2:
                    status = stub.LoadModel(detector_pb2.LoadModelRequest(model=name), timeout=30).status
                    assert status.serving_version == 1
                else:
                    registry.refresh()
                if i >= LIVE:
                    gone = f"churn{i - LIVE:03d}"
                    os.rename(repository / gone, trash / gone)  # and disappears at once
                    registry.refresh()
        except BaseException as exc:
            churn_errors.append(exc)
        finally:
            done.set()

    def read(index: int) -> None:
        unknown = f"unknown{index}"
        with channel(detector.server.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            while not done.is_set():
                try:
                    stub.ListModels(detector_pb2.ListModelsRequest(), timeout=30)
                except grpc.RpcError as exc:
                    wrong.append(f"ListModels: {exc.code()}: {exc.details()}")
                try:
                    stub.Detect(detect_request(unknown, rows), timeout=30)
                    wrong.append(f"Detect {unknown}: answered")
                except grpc.RpcError as exc:
                    if (exc.code(), exc.details()) != (grpc.StatusCode.NOT_FOUND, f"model {unknown!r} not found"):
                        wrong.append(f"Detect {unknown}: {exc.code()}: {exc.details()}")
                rounds[index] += 1

    def read_in_process() -> None:
        while not done.is_set():
            try:
                for _ in range(100):
                    registry.has_models  # noqa: B018
                registry.statuses()
                registry.acquire("unknown")
                wrong.append("acquire unknown: answered")
            except NotFound as exc:
                if exc.message != "model 'unknown' not found":
                    wrong.append(f"acquire unknown: {exc.message}")
            except Exception as exc:
                wrong.append(f"in process: {exc!r}")

    threads = [threading.Thread(target=churn), threading.Thread(target=read_in_process)]
    threads += [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads interleave far more often than every 5 ms
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        sys.setswitchinterval(switch_interval)
        assert not any(thread.is_alive() for thread in threads)
        assert churn_errors == []
        assert wrong == []
        assert min(rounds) > 0
        assert internal_answers(detector) == 0
        registry.refresh()
        listed = detector.stub.ListModels(detector_pb2.ListModelsRequest()).models
        expected = [(f"churn{i:03d}", 1) for i in range(FOLDERS - LIVE, FOLDERS)]
        assert [(m.name, m.serving_version) for m in listed] == expected
    finally:
        sys.setswitchinterval(switch_interval)
        done.set()
        detector.close()
    events = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert [e for e in events if e.get("level") in ("error", "critical") or "exception" in e] == []


def test_unloading_the_only_model_is_not_found_and_not_ready_until_loaded(repository, detector, fit):
    models.publish_simple(repository, "m", fit, dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    assert readiness(detector) == health_pb2.HealthCheckResponse.SERVING

    status = detector.stub.UnloadModel(detector_pb2.UnloadModelRequest(model="m")).status
    assert status.unloaded and status.serving_version == 0
    detector.server.call(lambda: detector.service.refresh())  # a scan does not bring it back
    with pytest.raises(grpc.RpcError) as info:
        detector.stub.Detect(detect_request("m", models.normal_rows(1, D)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "model 'm' is unloaded on this detector; LoadModel serves it again"
    assert readiness(detector) == health_pb2.HealthCheckResponse.NOT_SERVING

    assert detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m")).status.serving_version == 1
    assert detector.stub.Detect(detect_request("m", models.normal_rows(2, D))).model_version == 1
    assert readiness(detector) == health_pb2.HealthCheckResponse.SERVING
