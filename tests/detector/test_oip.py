"""The detector's Open Inference Protocol (KServe v2) service, called by Triton's own client
from PyPI (tritonclient[grpc], which sends raw contents) on a real detector: an autoencoder, a
routed model and a classifier answer exactly what Detect answers for the same rows; health,
readiness and metadata; typed contents and chosen outputs; model versions; a bad request is
INVALID_ARGUMENT naming the input; tokens apply as to Detect."""

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from oddity.oip import grpc_predict_v2_pb2 as oip
from oddity.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from oddity.v1 import detector_pb2
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request

D = 8
FEATURES = [f"f{i}" for i in range(D)]


@pytest.fixture
def sensors(repository, detector):
    """An autoencoder over named features, served."""
    fitted = models.fit_pca_group(models.normal_rows(1000, D, seed=3), components=3)
    models.publish_simple(repository, "sensors", fitted, dimension=D, feature_names=FEATURES)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="sensors"))
    return detector


def client(detector) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=detector.server.target)


def tensor(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    given = triton.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array)
    return given


def rows_with_anomalies(n: int, seed: int) -> np.ndarray:
    rows = models.normal_rows(n, D, seed=seed)
    rows[::3] += 6.0  # every third row far from normal
    return rows


def refusal(call) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status(), caught.value.message()


def test_autoencoder_answers_equal_detects_for_the_matrix_and_per_feature_inputs(sensors):
    rows = rows_with_anomalies(24, seed=4)
    expected = sensors.stub.Detect(detect_request("sensors", rows))
    oip_client = client(sensors)
    matrix = oip_client.infer("sensors", [tensor("input", rows, "FP32")])
    per_feature = oip_client.infer(
        "sensors",
        [tensor(name, rows[:, i].astype(np.float64), "FP64") for i, name in reversed(list(enumerate(FEATURES)))],
    )
    for answer in (matrix, per_feature):
        assert answer.get_response().model_version == "1"
        np.testing.assert_array_equal(answer.as_numpy("score"), np.array(expected.scores))
        np.testing.assert_array_equal(answer.as_numpy("normalized_score"), np.array(expected.normalized_scores))
        np.testing.assert_array_equal(answer.as_numpy("is_anomaly"), np.array(expected.is_anomaly))
        assert answer.as_numpy("group").tolist() == [b"all"] * len(rows)
    assert np.array(expected.is_anomaly)[::3].all()


def test_routed_answers_equal_detects_with_the_routing_value_as_an_input(routed):
    detector, _, young, older = routed
    rows = np.vstack([young[:5], older[:5], young[5:7]])
    ages = np.array([4.0] * 5 + [7.0] * 5 + [10.0] * 2)
    expected = detector.stub.Detect(detect_request("drawings", rows, routing_values=ages.tolist()))
    oip_client = client(detector)
    numeric = oip_client.infer("drawings", [tensor("input", rows, "FP32"), tensor("age", ages, "FP64")])
    text = np.array([str(a).encode() for a in ages], dtype=np.object_)
    as_text = oip_client.infer("drawings", [tensor("input", rows, "FP32"), tensor("age", text, "BYTES")])
    groups = [expected.group_names[i] for i in expected.row_groups]
    assert groups == ["age_3_6"] * 5 + ["age_6_9"] * 5 + ["all"] * 2
    for answer in (numeric, as_text):
        np.testing.assert_array_equal(answer.as_numpy("score"), np.array(expected.scores))
        np.testing.assert_array_equal(answer.as_numpy("is_anomaly"), np.array(expected.is_anomaly))
        assert [g.decode() for g in answer.as_numpy("group")] == groups


def test_a_large_request_read_in_place_answers_what_detect_answers(routed):
    """From 64 KiB on, raw contents are read in place from the request bytes (the age as raw BYTES too)."""
    detector, _, young, older = routed
    rows = np.vstack([young, older, young])[:4096]
    ages = np.resize(np.array([4.0, 7.0, 10.0]), len(rows))
    expected = detector.stub.Detect(detect_request("drawings", rows, routing_values=ages.tolist()))
    text = np.array([str(a).encode() for a in ages], dtype=np.object_)
    answer = client(detector).infer("drawings", [tensor("input", rows, "FP32"), tensor("age", text, "BYTES")])
    np.testing.assert_array_equal(answer.as_numpy("score"), np.array(expected.scores))
    np.testing.assert_array_equal(answer.as_numpy("is_anomaly"), np.array(expected.is_anomaly))
    assert [g.decode() for g in answer.as_numpy("group")] == [expected.group_names[i] for i in expected.row_groups]
    short = tensor("input", rows, "FP32")
    short.set_shape([len(rows) + 1, D])
    assert refusal(lambda: client(detector).infer("drawings", [short])) == (
        "StatusCode.INVALID_ARGUMENT",
        f"input 'input': raw content has {len(rows) * D * 4} bytes; shape [{len(rows) + 1}, {D}] of FP32 needs "
        f"{(len(rows) + 1) * D * 4}",
    )


@pytest.mark.slow
def test_classifier_answers_classes_and_probabilities_equal_to_detects(repository, detector):
    from tests.detector.test_classifier_scores import fitted, publish_classifier

    learner = fitted()
    publish_classifier(repository, "quality", learner.to_onnx(), [str(c) for c in learner.classes_])
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="quality"))
    rows = np.random.default_rng(5).normal(size=(30, 6)).astype(np.float32)
    expected = detector.stub.Detect(detect_request("quality", rows))
    answer = client(detector).infer("quality", [tensor("input", rows, "FP32")])
    assert [c.decode() for c in answer.as_numpy("class")] == list(expected.predicted_classes)
    probabilities = np.frombuffer(expected.probabilities.raw_data, dtype="<f4").reshape(30, 2)
    np.testing.assert_array_equal(answer.as_numpy("probabilities"), probabilities)
    assert {o.name for o in answer.get_response().outputs} == {"class", "probabilities", "group"}
    metadata = client(detector).get_model_metadata("quality")
    assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == [
        ("class", "BYTES", [-1]),
        ("probabilities", "FP32", [-1, 2]),
        ("group", "BYTES", [-1]),
    ]


def test_health_readiness_and_metadata(routed):
    detector = routed[0]
    oip_client = client(detector)
    assert oip_client.is_server_live() and oip_client.is_server_ready()
    assert oip_client.is_model_ready("drawings") and oip_client.is_model_ready("drawings", "1")
    assert not oip_client.is_model_ready("drawings", "2") and not oip_client.is_model_ready("nope")
    assert oip_client.get_server_metadata().name == "oddity-detector"
    metadata = oip_client.get_model_metadata("drawings")
    assert (metadata.name, list(metadata.versions), metadata.platform) == ("drawings", ["1"], "oddity")
    assert [(i.name, i.datatype, list(i.shape)) for i in metadata.inputs] == [
        ("input", "FP32", [-1, D]),
        ("age", "FP64", [-1]),
    ]
    assert [o.name for o in metadata.outputs] == ["score", "normalized_score", "is_anomaly", "group"]
    assert refusal(lambda: oip_client.get_model_metadata("drawings", "2")) == (
        "StatusCode.NOT_FOUND",
        "version 2 of model 'drawings' is not serving (serving 1)",
    )


def test_typed_contents_are_answered_typed_with_the_outputs_asked_for(sensors):
    rows = rows_with_anomalies(3, seed=6)
    expected = sensors.stub.Detect(detect_request("sensors", rows))
    request = oip.ModelInferRequest(model_name="sensors", model_version="1", id="call-7")
    request.inputs.add(name="input", datatype="FP32", shape=[3, D]).contents.fp32_contents.extend(rows.ravel().tolist())
    request.outputs.add(name="is_anomaly")
    request.outputs.add(name="score")
    request.outputs.add(name="group")
    answer = oip_grpc.GRPCInferenceServiceStub(sensors.channel).ModelInfer(request)
    assert (answer.id, answer.model_version, len(answer.raw_output_contents)) == ("call-7", "1", 0)
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("is_anomaly", "BOOL", [3]),
        ("score", "FP64", [3]),
        ("group", "BYTES", [3]),
    ]
    assert list(answer.outputs[0].contents.bool_contents) == list(expected.is_anomaly)
    assert list(answer.outputs[1].contents.fp64_contents) == list(expected.scores)
    assert list(answer.outputs[2].contents.bytes_contents) == [b"all"] * 3


def test_a_new_version_is_read_by_its_own_feature_names(sensors, repository):
    oip_client = client(sensors)
    rows = models.normal_rows(4, D, seed=8)

    def per_feature(names: list[str]) -> list[triton.InferInput]:
        return [tensor(name, rows[:, i], "FP32") for i, name in enumerate(names)]

    assert oip_client.infer("sensors", per_feature(FEATURES)).get_response().model_version == "1"
    renamed = [f"g{i}" for i in range(D)]
    fitted = models.fit_pca_group(models.normal_rows(1000, D, seed=3), components=3)
    assert models.publish_simple(repository, "sensors", fitted, dimension=D, feature_names=renamed) == 2
    sensors.stub.LoadModel(detector_pb2.LoadModelRequest(model="sensors"))
    assert oip_client.infer("sensors", per_feature(renamed)).get_response().model_version == "2"
    status, message = refusal(lambda: oip_client.infer("sensors", per_feature(FEATURES)))
    assert (status, message.split(";")[0]) == ("StatusCode.INVALID_ARGUMENT", "unknown input 'f0'")


def test_a_bad_request_is_invalid_argument_naming_the_input(sensors):
    oip_client = client(sensors)
    rows = models.normal_rows(2, D)
    wrong_type = tensor("input", rows.astype(np.int64), "INT64")
    wrong_shape = tensor("input", np.zeros((2, D + 1), dtype=np.float32), "FP32")
    short = tensor("input", rows, "FP32")
    short.set_shape([3, D])  # the raw content holds 2 rows
    cases = {
        "datatype": ([wrong_type], "input 'input' has datatype 'INT64'; expected FP32 or FP64"),
        "shape": ([wrong_shape], f"input 'input' has shape [2, {D + 1}]; expected [rows, {D}] ([-1, {D}])"),
        "unknown": (
            [tensor("input", rows, "FP32"), tensor("speed", rows[:, 0], "FP32")],
            f"unknown input 'speed'; model 'sensors' takes 'input' [-1, {D}] or one [-1] input per feature {FEATURES}",
        ),
        "raw size": (
            [short],
            f"input 'input': raw content has {2 * D * 4} bytes; shape [3, {D}] of FP32 needs {3 * D * 4}",
        ),
    }
    for case, (inputs, message) in cases.items():
        assert refusal(lambda inputs=inputs: oip_client.infer("sensors", inputs)) == (
            "StatusCode.INVALID_ARGUMENT",
            message,
        ), case


def test_tokens_apply_as_to_detect(repository, tmp_path):
    read = tmp_path / "read-tokens"
    read.write_text("dashboard:r3ad-token\n")
    fitted = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fitted, dimension=D)
    detector = start_detector(repository, read_tokens_file=read)
    try:
        oip_client = client(detector)
        rows = [tensor("input", models.normal_rows(2, D), "FP32")]
        status, _ = refusal(lambda: oip_client.infer("m", rows))
        assert status == "StatusCode.UNAUTHENTICATED"
        answer = oip_client.infer("m", rows, headers={"authorization": "Bearer r3ad-token"})
        assert answer.as_numpy("score").shape == (2,)
        stub = oip_grpc.GRPCInferenceServiceStub(detector.channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ServerReady(oip.ServerReadyRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        detector.close()
