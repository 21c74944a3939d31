"""Large requests are scored on worker threads that run at a lower CPU priority than the
event loop (`inference_worker_nice`), so that small requests keep their latency while large
ones take every core."""

import os
import sys
import threading

import numpy as np
import pytest

from oddity.v1 import detector_pb2
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request

D = 6


@pytest.mark.skipif(sys.platform != "linux", reason="threads have nice values of their own on Linux")
def test_large_requests_are_scored_on_threads_with_a_higher_nice_value(repository):
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    # inline_max_values=0: every request is large, scored on a worker.
    detector = start_detector(repository, inline_max_values=0, inference_worker_nice=7)
    try:
        detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
        rows = models.normal_rows(3, D, seed=1)
        response = detector.stub.Detect(detect_request("m", rows), timeout=30)
        np.testing.assert_allclose(response.scores, models.score_with_onnx(fit.onnx, rows), rtol=1e-5)
        workers = [t for t in threading.enumerate() if t.name.startswith("oddity-infer")]
        assert workers
        loop_nice = os.getpriority(os.PRIO_PROCESS, 0)
        assert {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in workers} == {min(loop_nice + 7, 19)}
    finally:
        detector.close()
