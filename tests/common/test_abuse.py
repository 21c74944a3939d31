"""The abuse suite: property-based and scripted attempts to take what is not the caller's own,
against real servers and real ONNX Runtime.

- Rate limit: any authorization header values, any spelling of a valid token; a header never
  mints a bucket of its own, and every spelling of one token is one client.
- Memory: any request size against any run memory budget; the call is refused exactly when its
  smallest run would not fit, and otherwise scores the very numbers of one unbounded run. Every
  model kind declares what a row costs.
- A model repository that cannot be written (any errno, injected where versions are written):
  the admin calls answer the status and the words training uses, and leave nothing behind.

Scripted cases of the same rows live beside the features they guard: test_limits.py,
test_auth.py, tests/detector/test_request_memory.py, tests/trainer/test_model_names.py,
tests/trainer/test_full_repository.py."""

from __future__ import annotations

import errno
import math
import os
import string

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from oddity.common import bundle
from oddity.common.scoring import SessionConfig, VersionScorer
from oddity.common.scoring.sessions import ROW_ALIGNMENT
from oddity.trainer import bundle_writer
from oddity.trainer.learners import registry
from oddity.trainer.learners.knn import KnnLearner
from oddity.v1 import trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets, models
from tests.support.client import detect_request
from tests.trainer.test_operator_decisions import spec, status
from tests.trainer.test_robustness import run_job

D = 4
BURST = 5
# Printable ASCII: what a gRPC client accepts in a text metadata value.
HEADER_TEXT = st.text(alphabet=string.printable[:95], max_size=60)
SHARED = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    repository = tmp_path_factory.mktemp("abuse") / "models"
    repository.mkdir()
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    return repository


def outcome(detector, metadata) -> grpc.StatusCode:
    try:
        detector.stub.Detect(detect_request("m", models.normal_rows(1, D)), metadata=metadata, timeout=10)
        return grpc.StatusCode.OK
    except grpc.RpcError as refused:
        return refused.code()


@pytest.mark.slow
def test_no_header_value_mints_a_bucket_without_tokens(published):
    """One caller, one bucket: over every example together, the burst is all that is admitted
    (the rate is one call in 10,000 s)."""
    detector = start_detector(published, rate_limit_per_client=0.0001, rate_limit_burst=BURST)
    seen: list[grpc.StatusCode] = []

    @SHARED
    @given(st.lists(st.one_of(HEADER_TEXT, HEADER_TEXT.map("Bearer {}".format)), min_size=1, max_size=12))
    def calls(values):
        seen.extend(outcome(detector, (("authorization", value),)) for value in values)

    try:
        calls()
    finally:
        detector.close()
    assert seen.count(grpc.StatusCode.OK) == BURST
    assert set(seen) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.mark.slow
def test_every_spelling_of_a_token_is_one_client_and_garbage_is_unauthenticated(published, tmp_path):
    tokens = tmp_path / "read-tokens"
    tokens.write_text("dashboard:token-a\n")
    detector = start_detector(published, read_tokens_file=tokens, rate_limit_per_client=0.0001, rate_limit_burst=BURST)
    valid = st.builds(
        "{}{}{}{}".format,
        st.sampled_from(["Bearer", "bearer", "BEARER", "bEaReR"]),
        st.text(alphabet=" ", min_size=1, max_size=3),
        st.just("token-a"),
        st.text(alphabet=" ", max_size=3),
    )
    admitted = [0]

    @SHARED
    @given(st.lists(st.one_of(valid.map(lambda v: (True, v)), HEADER_TEXT.map(lambda v: (False, v))), max_size=10))
    def calls(headers):
        for is_valid, value in headers:
            code = outcome(detector, (("authorization", value),))
            if not is_valid and value.strip().lower() != "bearer token-a":
                assert code == grpc.StatusCode.UNAUTHENTICATED, value
            elif admitted[0] < BURST:
                assert code == grpc.StatusCode.OK, value
                admitted[0] += 1
            else:
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, value

    try:
        calls()
    finally:
        detector.close()
    assert admitted[0] == BURST


@pytest.fixture(scope="module")
def knn_version(tmp_path_factory):
    repository = tmp_path_factory.mktemp("budget") / "models"
    repository.mkdir()
    rows = np.random.default_rng(0).normal(size=(2_000, 8)).astype(np.float32)
    graph = KnnLearner(max_reference=2_000).fit(rows).to_onnx()
    models.publish_simple(repository, "knn", models.timing_group(graph), dimension=8)
    verified = bundle.load_verified_version(repository, "knn", 1)
    unbounded = VersionScorer(verified, SessionConfig(run_memory_budget_bytes=1 << 40))
    return verified, unbounded


@pytest.mark.slow
@SHARED
@given(
    n=st.integers(1, 5_000),
    budget=st.integers(16 << 10, 64 << 20),
    threads=st.sampled_from([1, 2]),
)
def test_any_request_against_any_budget_is_refused_or_scored_exactly(knn_version, n, budget, threads):
    verified, unbounded = knn_version
    cost = verified.manifest.groups[0].scratch_bytes_per_row
    rows = np.random.default_rng(n).normal(size=(n, 8)).astype(np.float32)
    scorer = VersionScorer(verified, SessionConfig(run_memory_budget_bytes=budget, bulk_intra_op_threads=threads))
    if min(n, ROW_ALIGNMENT) * cost > budget:
        with pytest.raises(Exception) as refused:
            scorer.score(rows, bulk=True)
        assert type(refused.value).__name__ == "ResourceExhausted"
        assert f"run memory budget of {budget / (1 << 20):,.1f} MB (run_memory_budget_mb)" in str(refused.value)
    else:
        expected = unbounded.score(rows).scores
        np.testing.assert_array_equal(scorer.score(rows, bulk=True).scores, expected)


ANOMALY_ROWS = np.random.default_rng(3).normal(size=(400, 6)).astype(np.float32)
# Few epochs: the graph's shape, not its fit, is what is checked.
QUICK = {
    "autoencoder": {"epochs": 2},
    "mlp_classifier": {"epochs": 2, "checkpoint_every": 0},
    "ensemble": {"members": [{"kind": "knn"}, {"kind": "autoencoder", "params": {"epochs": 2}}]},
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", registry.kinds())
def test_every_kind_declares_what_a_row_costs(kind, tmp_path):
    """Each kind's graph, published, declares at least the bytes of its own per-row outputs
    (as ONNX Runtime reports their shapes)."""
    learner = registry.make_learner(kind, QUICK.get(kind, {}))
    if learner.is_classifier:
        learner.fit(ANOMALY_ROWS, (ANOMALY_ROWS[:, 0] > 0).astype(np.int64))
    else:
        learner.fit(ANOMALY_ROWS)
    graph = learner.to_onnx()
    models.publish_simple(tmp_path, "k", models.timing_group(graph), dimension=6)
    outputs = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).get_outputs()
    output_bytes = sum(4 * math.prod(d if isinstance(d, int) else 6 for d in o.shape[1:]) for o in outputs)
    assert bundle.read_manifest(tmp_path / "k" / "1").groups[0].scratch_bytes_per_row >= output_bytes


@pytest.fixture
def trainer_with_versions(data_volume, repository):
    datasets.write_dataset(data_volume, "w", spec(policy="manual"), {"a.csv": datasets.sensor_frame(400)})
    trainer = start_trainer(data_volume, repository, watch=False)
    assert run_job(trainer, "w").published_version == 1
    assert run_job(trainer, "w", force=True).published_version == 2
    yield trainer, repository
    trainer.close()


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(code=st.sampled_from([errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO, errno.ENOENT]))
def test_any_write_failure_on_an_admin_call_is_named_and_changes_nothing(trainer_with_versions, code, monkeypatch):
    trainer, repository = trainer_with_versions
    before = sorted(os.listdir(repository / "w"))
    pinned = status(trainer, "w").pinned_version

    def fail(path, data):
        raise OSError(code, os.strerror(code))

    full = code in (errno.ENOSPC, errno.EDQUOT)
    expected_code = grpc.StatusCode.RESOURCE_EXHAUSTED if full else grpc.StatusCode.FAILED_PRECONDITION
    with monkeypatch.context() as patched:
        patched.setattr(bundle_writer, "_write_synced", fail)
        for call in (
            lambda: trainer.stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="w", percentile=99)),
            lambda: trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="w", version=1)),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert (refused.value.code(), refused.value.details()) == (
                expected_code,
                f"cannot write to the model repository {repository}: {os.strerror(code)}",
            )
    assert sorted(os.listdir(repository / "w")) == before  # nothing half-written stays
    assert status(trainer, "w").pinned_version == pinned
