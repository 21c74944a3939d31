"""The SDK against a real detector: a DataFrame scores exactly as Detect scores the same rows,
its routing column routes, results come back as a frame, errors are the domain errors with
the service, address and status in the message, and model management round-trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oddity.client import DetectorClient, InvalidArgument, NotFound, RetryPolicy, Unavailable
from oddity.v1 import detector_pb2
from tests.client.conftest import FEATURES, publish_models, table
from tests.conftest import start_detector
from tests.support.client import detect_request
from tests.support.interceptors import RequestIds


def stub_detect(served, model: str, frame: pd.DataFrame, **fields) -> detector_pb2.DetectResponse:
    """Detect through the raw stub on the features in the manifest's order."""
    rows = frame[FEATURES].to_numpy(np.float32)
    return served.detector.stub.Detect(detect_request(model, rows, **fields), timeout=30)


def test_a_dataframe_scores_as_detect_scores_the_same_rows(served):
    frame = table(60)
    expected = stub_detect(served, "sensors", frame, explain_top_k=3)
    with DetectorClient(served.target) as detector:
        result = detector.detect("sensors", frame, explain_top_k=3)
    assert (result.model, result.version, result.kind) == ("sensors", 1, "autoencoder")
    assert result.scores.tolist() == list(expected.scores)
    assert result.normalized_scores.tolist() == list(expected.normalized_scores)
    assert result.is_anomaly.tolist() == list(expected.is_anomaly)
    assert result.groups == ["all"] * 60
    assert 0 < result.is_anomaly.sum() < 60

    scored = result.to_frame()
    assert list(scored.columns) == [
        "score",
        "normalized_score",
        "is_anomaly",
        "threshold",
        "confidence",
        "group",
        "fallback",
        "top_features",
    ]
    assert scored.index.equals(frame.index)
    first = expected.explanations[0].features
    assert scored["top_features"].iloc[0] == ";".join(f"{f.name}:{f.contribution:.2f}" for f in first)
    assert [c.name for c in result.explanations[0]] == [f.name for f in first]
    assert result.to_records()[0]["top_features"][0] == {
        "name": first[0].name,
        "share": first[0].contribution,
        "error": first[0].error,
    }


def test_the_routing_column_routes_rows_unless_values_are_given(served):
    frame = table(40)
    expected = stub_detect(served, "routed", frame, routing_values=frame["age"].tolist())
    with DetectorClient(served.target) as detector:
        routed = detector.detect("routed", frame)
        everyone_young = detector.detect("routed", frame, routing_values=4)
        unrouted = detector.detect("routed", frame.drop(columns=["age"]))
    assert routed.scores.tolist() == list(expected.scores)
    assert routed.groups == ["young" if age < 6 else "old" for age in frame["age"]]
    assert everyone_young.groups == ["young"] * 40
    assert unrouted.groups == ["all"] * 40 and unrouted.fallback.all()


def test_an_array_scores_in_the_manifest_order(served):
    rows = table(5)[FEATURES].to_numpy(np.float32)
    with DetectorClient(served.target) as detector:
        plain = detector.detect("sensors", rows)
        named = detector.detect("sensors", rows[:, ::-1], feature_names=FEATURES[::-1])
        one = detector.detect("sensors", rows[0])
    assert named.scores.tolist() == plain.scores.tolist()
    assert one.scores.tolist() == plain.scores.tolist()[:1]


def test_errors_are_domain_errors_naming_service_address_and_status(served):
    with DetectorClient(served.target) as detector:
        with pytest.raises(NotFound) as unknown:
            detector.detect("nope", np.zeros((1, 4), np.float32))
        assert str(unknown.value).startswith(f"detector at {served.target}: NOT_FOUND: ")
        assert "nope" in str(unknown.value)
        with pytest.raises(InvalidArgument) as missing:
            detector.detect("sensors", table(3).drop(columns=["f1", "f3"]))
        assert str(missing.value) == "model 'sensors' needs columns that are missing: f1, f3"
        with pytest.raises(InvalidArgument) as wide:
            detector.detect("sensors", np.zeros((2, 5), np.float32))
        assert f"detector at {served.target}: INVALID_ARGUMENT: " in str(wide.value)

    fast = RetryPolicy(max_attempts=2, initial_backoff_seconds=0.01, max_backoff_seconds=0.01)
    with DetectorClient("127.0.0.1:1", timeout=2, retry=fast) as nowhere, pytest.raises(Unavailable) as down:
        nowhere.models()
    assert str(down.value).startswith("detector at 127.0.0.1:1: UNAVAILABLE: ")
    assert str(down.value).endswith(
        "(no connection to 127.0.0.1:1: is the detector running there, with TLS settings that match?)"
    )


def test_models_model_load_and_unload(served):
    with DetectorClient(served.target) as detector:
        names = {m.name: m for m in detector.models()}
        assert sorted(names) == ["routed", "sensors"]
        assert (names["sensors"].serving_version, names["sensors"].available_versions) == (1, (1,))
        details = detector.model("routed")
        assert details.manifest.routing_key == "age"
        assert [g.name for g in details.manifest.groups] == ["all", "young", "old"]
        assert details.to_dict()["manifest"]["feature_names"] == FEATURES
        try:
            assert detector.unload_model("sensors").unloaded is True
            with pytest.raises(NotFound):
                detector.detect("sensors", np.zeros((1, 4), np.float32))
        finally:
            status = detector.load_model("sensors")
        assert (status.unloaded, status.serving_version) == (False, 1)


def test_the_request_id_goes_out_with_every_call(tmp_path):
    repository = tmp_path / "models"
    repository.mkdir()
    publish_models(repository)
    ids = RequestIds(lambda method: method.endswith("/Detect"))
    detector = start_detector(repository, interceptors=[ids])
    try:
        with DetectorClient(detector.server.target, request_id="batch-7") as client:
            client.detect("sensors", np.zeros((1, 4), np.float32))
            client.request_id = "batch-8"
            client.detect("sensors", np.zeros((1, 4), np.float32))
            client.request_id = None
            client.detect("sensors", np.zeros((1, 4), np.float32))
    finally:
        detector.close()
    assert ids.seen[:2] == ["batch-7", "batch-8"]
    assert ids.seen[2] not in ("batch-7", "batch-8")  # the server makes its own
