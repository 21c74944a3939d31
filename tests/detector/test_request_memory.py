"""One request's memory is bounded by the detector's run memory budget, whatever its size: the
trainer declares the scratch memory a row takes in each graph, the detector sizes its ONNX
Runtime runs by it, refuses a request whose smallest run would not fit, and gives the memory
back after the call."""

from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from oddity.common.bundle import read_manifest
from oddity.trainer.learners.knn import KnnLearner
from oddity.v1 import detector_pb2_grpc
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel

D = 12
REFERENCE_ROWS = 20_000
MB = 1 << 20


def publish_knn(repository: Path, reference_rows: int = REFERENCE_ROWS) -> None:
    rows = np.random.default_rng(0).normal(size=(reference_rows, D)).astype(np.float32)
    graph = KnnLearner(max_reference=reference_rows).fit(rows).to_onnx()
    models.publish_simple(repository, "knn", models.timing_group(graph), dimension=D)


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM line")


def test_the_trainer_declares_what_a_row_costs_in_the_graph(repository):
    publish_knn(repository, reference_rows=4_000)
    declared = read_manifest(repository / "knn" / "1").groups[0].scratch_bytes_per_row
    # The graph holds the rows x reference matrix of the candidate search ([z, 1] times the
    # transposed [-2 r; |r|^2]): at least one float32 row of 4,000 values per scored row.
    assert declared >= 4_000 * 4


@pytest.mark.slow
def test_a_65536_row_request_stays_within_the_budget_and_gives_the_memory_back(repository):
    publish_knn(repository)
    process = ServiceProcess("oddity.detector.main", ["--model-repository", str(repository)]).start()
    process.wait_ready("oddity.v1.Detector")
    try:
        rows = np.random.default_rng(1).normal(size=(65_536, D)).astype(np.float32)
        with channel(process.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            stub.Detect(detect_request("knn", rows[:1]), timeout=30)
            detector = psutil.Process(process.proc.pid)
            idle = detector.memory_info().rss
            Path(f"/proc/{process.proc.pid}/clear_refs").write_text("5")  # the peak starts at idle
            response = stub.Detect(detect_request("knn", rows), timeout=120)
            after = detector.memory_info().rss
            peak = peak_rss(process.proc.pid)
        assert len(response.scores) == 65_536
        # The default budget is 128 MB of scratch; ONNX Runtime's arena rounds its blocks up.
        assert peak - idle <= 300 * MB, f"peak {(peak - idle) / MB:.0f} MB above idle"
        assert after - idle <= 32 * MB, f"{(after - idle) / MB:.0f} MB kept after the call"
    finally:
        process.kill()


def test_a_request_whose_smallest_run_exceeds_the_budget_is_refused_naming_the_limit(repository):
    publish_knn(repository)  # about 0.3 MB a row: 64 rows take about 20 MB
    detector = start_detector(repository, run_memory_budget_mb=1)
    try:
        stub = detector.stub
        rows = np.random.default_rng(2).normal(size=(64, D)).astype(np.float32)
        assert len(stub.Detect(detect_request("knn", rows[:1]), timeout=30).scores) == 1
        with pytest.raises(grpc.RpcError) as refused:
            stub.Detect(detect_request("knn", rows), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        message = refused.value.details()
        assert "model 'knn'" in message
        assert "run memory budget of 1.0 MB (run_memory_budget_mb)" in message
        # The detector keeps serving.
        assert len(stub.Detect(detect_request("knn", rows[:2]), timeout=30).scores) == 2
    finally:
        detector.close()
