"""Logs as a log pipeline reads them: every line a service writes — its own, grpc's, and the
warnings and progress of the libraries that export a Hugging Face model — is one JSON object,
and a request id given by the caller reaches the embedder through the detector."""

import json
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest

from oddity.v1 import detector_pb2, detector_pb2_grpc, embedder_pb2, embedder_pb2_grpc
from tests.support import drawings, encoders, models
from tests.support.servers import ServiceProcess, channel, embedder_process


@pytest.mark.slow
def test_every_line_is_json_and_request_ids_cross_services(tmp_path, repository):
    vit = encoders.tiny_vit(tmp_path / "vit")
    embedder = embedder_process(
        tmp_path / "cache", {"vit": {"model_id": str(vit), "modality": "image"}}, "--access-log"
    )
    detector = None
    try:
        embedder.wait_ready("oddity.v1.Embedder", timeout=180)
        with channel(embedder.target) as ch:
            info = embedder_pb2_grpc.EmbedderStub(ch).GetInfo(embedder_pb2.GetInfoRequest(model="vit"), timeout=30)
        models.publish_image_model(repository, info.models[0])
        detector = ServiceProcess(
            "oddity.detector.main",
            ["--model-repository", str(repository), "--embedder", embedder.target, "--access-log"],
        ).start()
        detector.wait_ready("oddity.v1.Detector")
        rng = np.random.default_rng(0)
        request = detector_pb2.DetectImagesRequest(
            model="pictures", images=[drawings.drawing(5.0, rng)], routing_values=[5]
        )
        with channel(detector.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            stub.DetectImages(request, timeout=60, metadata=(("x-request-id", "trace-7f3a"),))
            # A bad request too: its error lines must be JSON as well.
            with pytest.raises(grpc.RpcError) as bad:
                stub.DetectImages(
                    detector_pb2.DetectImagesRequest(model="pictures", images=[b"nope"], routing_values=[5]),
                    timeout=60,
                )
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert detector.terminate() == 0
        assert embedder.terminate() == 0
        for process in (embedder, detector):
            not_json = [line for line in process.lines if not _is_json_object(line)]
            assert not_json == [], f"{process.module} wrote lines that are not JSON objects"
        # The transformer optimizer's line per fusion is kept at debug: none at info.
        assert embedder.events("Sort graphs in topological order") == []
        embedded = [e for e in embedder.events("request") if e.get("rpc") == "Embed"]
        assert [e["request_id"] for e in embedded][:1] == ["trace-7f3a"]
    finally:
        if detector is not None:
            detector.kill()
        embedder.kill()


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# Our lines (structlog) and a library's (the standard library) from two threads at once, as a
# request's line and an exporter's progress meet in the embedder.
TWO_WRITERS = textwrap.dedent(
    """
    import logging, threading
    from oddity.common.logging import configure_logging, get_logger

    configure_logging(service="two-writers")
    ours, theirs = get_logger("ours"), logging.getLogger("library")
    start = threading.Barrier(2)

    def write(log):
        start.wait()
        for i in range(3000):
            log.info("line %d", i)

    threads = [threading.Thread(target=write, args=(log,)) for log in (ours, theirs)]
    for t in threads: t.start()
    for t in threads: t.join()
    """
)


def test_lines_of_two_threads_never_run_into_each_other():
    result = subprocess.run([sys.executable, "-c", TWO_WRITERS], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6000
    assert [line for line in lines if not _is_json_object(line)] == []


@pytest.mark.slow
def test_asking_while_a_model_loads_is_answered_unavailable_without_a_warning(tmp_path):
    """A start-up state is expected: the embedder answers UNAVAILABLE while its model loads,
    and logs it at debug level, not as a warning on every console that calls it early."""
    vit = encoders.tiny_vit(tmp_path / "vit")
    embedder = embedder_process(tmp_path / "cache", {"vit": {"model_id": str(vit), "modality": "image"}})
    try:
        loading = 0
        with channel(embedder.target) as ch:
            stub = embedder_pb2_grpc.EmbedderStub(ch)
            for _ in range(3000):
                try:
                    stub.GetInfo(embedder_pb2.GetInfoRequest(), timeout=30, wait_for_ready=True)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    # The trailer that tells callers (a training job) to wait for it, not give up.
                    assert ("oddity-state", "loading") in tuple(exc.trailing_metadata())
                    loading += 1
        assert loading > 0, "the model loaded before the first call: nothing was checked"
        assert embedder.terminate() == 0
        assert [e for e in embedder.events("request failed") if e.get("code") == "UNAVAILABLE"] == []
    finally:
        embedder.kill()
