"""Micro-batching: concurrent requests coalesce into shared ONNX calls, every caller gets
exactly its own rows back, and a bad request in a batch fails alone, whether the batch is
scored on the event loop or (past `inline_max_batch_values`) on the batch thread; a batch closes at
`max_batch_rows` rows or `max_batch_values` values."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from oddity.detector.batching import MicroBatcher
from oddity.v1 import detector_pb2, manifest_pb2
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request

D = 6
# Where batches are scored: the defaults (these small batches on the event loop), or every
# batch on the batch thread.
PLACES = {"loop": {}, "batch_thread": {"inline_max_batch_values": 0}}


@pytest.fixture(params=sorted(PLACES))
def routed(repository, request):
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
    detector = start_detector(repository, **PLACES[request.param])
    try:
        detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="kids"))
        yield detector, {"age_3_6": fit_young, "age_6_9": fit_older}
    finally:
        detector.close()


@pytest.mark.slow
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
        # Whether this request joins the abandoned batch or starts the next one, only it is scored.
        assert len(detector.stub.Detect(request, timeout=10).scores) == 1
        assert detector.metric("oddity_detector_batch_requests_count") == 1
        assert detector.metric("oddity_detector_batch_requests_sum") == 1
    finally:
        detector.close()


def test_a_batch_closes_at_max_batch_values(repository):
    """Batches of two one-row requests (2 x D values) run at once, not after the delay."""
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    detector = start_detector(repository, max_batch_delay_ms=60_000, max_batch_values=2 * D)
    try:
        rows = models.normal_rows(4, D, seed=5)
        with ThreadPoolExecutor(max_workers=4) as pool:
            calls = [pool.submit(detector.stub.Detect, detect_request("m", row), timeout=30) for row in rows]
            scores = [call.result().scores[0] for call in calls]
        np.testing.assert_allclose(scores, models.score_with_onnx(fit.onnx, rows), rtol=1e-5)
        assert detector.metric("oddity_detector_batch_requests_count") == 2
        assert detector.metric("oddity_detector_batch_requests_sum") == 4
    finally:
        detector.close()


class CountingThread(ThreadPoolExecutor):
    """A batch thread that counts the batches handed to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize(
    ("inline_max_values", "inline_max_seconds", "handed_over"),
    [
        (10**9, 10.0, [0, 0, 0]),  # narrow and quick: every batch on the event loop
        (0, 10.0, [1, 2, 3]),  # wider than inline_max_values: every batch on the batch thread
        (10**9, 0.0, [0, 1, 2]),  # slower than inline_max_seconds once the first batch is timed
    ],
)
def test_where_a_batch_is_scored(repository, detector, inline_max_values, inline_max_seconds, handed_over):
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    rows = models.normal_rows(3, D, seed=6)
    model = detector.model_registry.acquire("m")
    try:
        with CountingThread() as thread:
            batcher = MicroBatcher(
                max_delay=0,
                inline_max_values=inline_max_values,
                inline_max_seconds=inline_max_seconds,
                batch_thread=thread,
            )

            async def three_batches() -> list[int]:
                counts = []
                for _ in range(3):
                    scores = await batcher.score(model, rows, (), None)
                    np.testing.assert_allclose(scores.scores, models.score_with_onnx(fit.onnx, rows), rtol=1e-5)
                    counts.append(thread.submitted)
                return counts

            assert asyncio.run(three_batches()) == handed_over
    finally:
        model.release()


def test_while_the_batch_thread_is_busy_a_due_batch_gathers_requests(repository, detector):
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    rows = models.normal_rows(3, D, seed=7)
    expected = models.score_with_onnx(fit.onnx, rows)
    batches: list[tuple[int, int]] = []  # (requests, rows) of each batch
    model = detector.model_registry.acquire("m")
    free = threading.Event()
    try:
        with CountingThread() as thread:
            batcher = MicroBatcher(
                max_delay=0, inline_max_values=0, batch_thread=thread, observe_batch=lambda *b: batches.append(b)
            )

            async def score() -> None:
                scores = await batcher.score(model, rows, (), None)
                np.testing.assert_allclose(scores.scores, expected, rtol=1e-5)

            async def scenario() -> None:
                thread.submit(free.wait)  # the batch thread is busy until `free`
                first = asyncio.ensure_future(score())
                while not batches:  # the first batch is handed to the thread, behind the busy task
                    await asyncio.sleep(0)
                others = [asyncio.ensure_future(score()) for _ in range(3)]
                for _ in range(10):  # loop turns (not time): the three requests arrive and their batch is due
                    await asyncio.sleep(0)
                assert batches == [(1, 3)]  # held, not handed to the busy thread
                free.set()
                await asyncio.gather(first, *others)

            asyncio.run(scenario())
            assert batches == [(1, 3), (3, 9)]
            assert thread.submitted == 3  # the busy task, the first batch, the three requests' batch
    finally:
        free.set()
        model.release()
