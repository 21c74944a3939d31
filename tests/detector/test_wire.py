"""The Detect wire format as the detector reads and writes it: the same messages protobuf
parses and serializes, columns on request, groups as a table, large requests walked without
copying their rows."""

import ast
import inspect

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor
from hypothesis import given, settings
from hypothesis import strategies as st

from oddity.common.scoring import Scores
from oddity.common.tensors import array_to_tensor
from oddity.detector import grpc_api, wire
from oddity.detector.grpc_api import detect_response
from oddity.detector.service import DetectOutput
from oddity.v1 import detector_pb2, tensor_pb2
from tests.detector.conftest import D
from tests.support import models
from tests.support.client import detect_request

Column = detector_pb2.DetectColumn


def reference_response(output: DetectOutput) -> detector_pb2.DetectResponse:
    """The answer built field by field with protobuf's own API: the oracle."""
    s = output.scores
    response = detector_pb2.DetectResponse(
        model=output.model,
        model_version=output.version,
        kind=output.kind,
        scores=s.scores.tolist(),
        normalized_scores=s.normalized.tolist(),
        is_anomaly=s.is_anomaly.tolist(),
        thresholds=s.thresholds.tolist(),
        confidences=s.confidences.tolist(),
        groups=[s.group_names[i] for i in s.row_groups.tolist()],
        fallback=s.fallback.tolist(),
        group_names=s.group_names,
        row_groups=s.row_groups.tolist() if len(s.group_names) > 1 else [],
    )
    if s.classes is not None and s.probabilities is not None:
        response.predicted_classes.extend([output.class_labels[i] for i in s.classes.tolist()])
        response.probabilities.CopyFrom(array_to_tensor(s.probabilities))
        response.class_labels.extend(output.class_labels)
        if s.predicted_scores is not None:
            response.predicted_scores.extend(s.predicted_scores.tolist())
    if s.explanations is not None:
        indices, errors, shares = s.explanations
        for row_indices, row_errors, row_shares in zip(indices.tolist(), errors.tolist(), shares.tolist(), strict=True):
            explanation = response.explanations.add()
            for index, error, share in zip(row_indices, row_errors, row_shares, strict=True):
                name = output.feature_names[index] if output.feature_names else f"#{index}"
                explanation.features.add(name=name, index=index, contribution=share, error=error)
    return response


def random_output(rng, n: int, groups: int, k: int, d: int, named: bool) -> DetectOutput:
    names = [f"group-{i}-{'é' * (i % 3)}" for i in range(groups)]
    row_groups = rng.integers(0, groups, n).astype(np.intp)
    explanations = None
    if k:
        errors = rng.random((n, d))
        indices = np.argsort(-errors, axis=1)[:, :k]
        explanations = (indices, np.take_along_axis(errors, indices, axis=1), rng.random((n, k)))
    scores = Scores(
        scores=rng.normal(size=n),
        normalized=rng.random(n),
        is_anomaly=rng.random(n) > 0.8,
        thresholds=rng.random(n),
        confidences=rng.random(n),
        group_names=names,
        row_groups=row_groups,
        fallback=rng.random(n) > 0.9,
        explanations=explanations,
    )
    # Feature names of every length class of a varint: short, 127+ bytes, non-ASCII.
    feature_names = [("x" * (i * 37 % 200)) + f"f{i}µ" for i in range(d)] if named else []
    return DetectOutput(
        model="m", version=7, kind="autoencoder", feature_names=feature_names, scores=scores, class_labels=[]
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    groups=st.sampled_from([1, 2, 3, 130, 300]),
    k=st.integers(0, 5),
    named=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_answers_parse_to_what_protobuf_would_have_written(n, groups, k, named, seed):
    output = random_output(np.random.default_rng(seed), n, groups, k, 140, named)
    parsed = detector_pb2.DetectResponse.FromString(detect_response(output))
    assert parsed == reference_response(output)


def test_classifier_answers_parse_to_what_protobuf_would_have_written():
    rng = np.random.default_rng(3)
    n = 50
    probabilities = rng.random((n, 3)).astype(np.float32)
    scores = Scores(
        scores=np.empty(0),
        normalized=np.empty(0),
        is_anomaly=np.empty(0, dtype=bool),
        thresholds=np.empty(0),
        confidences=probabilities.max(axis=1).astype(np.float64),
        group_names=["all"],
        row_groups=np.zeros(n, dtype=np.intp),
        fallback=np.zeros(n, dtype=bool),
        classes=probabilities.argmax(axis=1),
        probabilities=probabilities,
        predicted_scores=rng.random(n),
    )
    output = DetectOutput("c", 2, "mlp_classifier", [], scores, ["ok", "late", "broken"])
    assert detector_pb2.DetectResponse.FromString(detect_response(output)) == reference_response(output)


def test_only_the_columns_asked_for_are_written():
    output = random_output(np.random.default_rng(4), 20, 2, 0, 4, False)
    parsed = detector_pb2.DetectResponse.FromString(
        detect_response(output, [Column.DETECT_COLUMN_SCORES, Column.DETECT_COLUMN_FALLBACK])
    )
    reference = reference_response(output)
    assert list(parsed.scores) == list(reference.scores)
    assert list(parsed.fallback) == list(reference.fallback)
    assert list(parsed.row_groups) == list(reference.row_groups)
    assert list(parsed.group_names) == ["group-0-", "group-1-é"]
    for absent in ("normalized_scores", "is_anomaly", "thresholds", "confidences", "groups"):
        assert len(getattr(parsed, absent)) == 0, absent


def test_varints_match_protobuf_for_every_size():
    values = np.array([0, 1, 127, 128, 300, 16383, 16384, 2**21 - 1, 2**21, 2**28, 2**32 - 1], dtype=np.uint64)
    expected = detector_pb2.DetectResponse(row_groups=values.tolist()).SerializeToString()
    assert wire.packed_uints(17, values) == expected


# -- decoding ------------------------------------------------------------------------------


def large_request(rows: np.ndarray, **fields) -> detector_pb2.DetectRequest:
    assert rows.nbytes >= wire.WALK_FROM_BYTES
    return detect_request("m", rows, **fields)


def assert_decodes_like_protobuf(data: bytes) -> None:
    decoded = wire.decode_detect_request(data)
    expected = detector_pb2.DetectRequest.FromString(data)
    raw = expected.rows.raw_data
    expected.rows.ClearField("raw_data")
    assert decoded.message == expected
    assert (bytes(decoded.rows_raw) if decoded.rows_raw is not None else b"") == raw


def test_a_large_request_keeps_its_rows_in_the_request_bytes():
    rows = models.normal_rows(4096, D, seed=1)
    data = large_request(rows, feature_names=[f"f{i}" for i in range(D)], routing_values=[3.5], explain_top_k=2)
    data = data.SerializeToString()
    decoded = wire.decode_detect_request(data)
    assert decoded.rows_raw is not None and decoded.rows_raw.obj is data  # a view, not a copy
    np.testing.assert_array_equal(np.frombuffer(decoded.rows_raw, "<f4").reshape(4096, D), rows)
    assert_decodes_like_protobuf(data)


def test_fields_in_any_order_repeated_and_unknown_decode_like_protobuf():
    rows = models.normal_rows(4096, D, seed=2)
    head = detector_pb2.DetectRequest(model="m", feature_names=["a", "b"]).SerializeToString()
    first = detector_pb2.DetectRequest(rows=tensor_pb2.Tensor(shape=[1, D], raw_data=b"\0" * 4 * D))
    second = large_request(rows, routing_values=[1.0, 2.0], columns=[Column.DETECT_COLUMN_SCORES])
    tag = lambda number, wire_type: wire.varints(np.array([number << 3 | wire_type])).tobytes()  # noqa: E731
    unknown = tag(99, 0) + b"\x05" + tag(98, 2) + b"\x03abc" + tag(12, 5) + b"1234"  # fields unknown to DetectRequest
    for data in (
        head + first.SerializeToString() + second.SerializeToString(),
        second.SerializeToString() + head,
        unknown + second.SerializeToString() + unknown,
        second.SerializeToString() + detector_pb2.DetectRequest(rows=tensor_pb2.Tensor(shape=[9])).SerializeToString(),
    ):
        assert_decodes_like_protobuf(data)


def filled(message, rows_bytes: int):
    """`message` with every field set (repeated ones twice, with different values), so that
    any field the walker misplaces shows up; the rows' raw_data is `rows_bytes` long."""
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            filled(getattr(message, field.name), rows_bytes)
            continue
        if field.type == FieldDescriptor.TYPE_ENUM:
            values = [v.number for v in field.enum_type.values[1:3]]
        elif field.type == FieldDescriptor.TYPE_STRING:
            values = [f"{field.name}-a", f"{field.name}-b"]
        elif field.type == FieldDescriptor.TYPE_BYTES:
            values = [bytes(range(256)) * (rows_bytes // 256), b"other"]
        elif field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            values = [field.number + 0.5, field.number + 0.25]
        elif field.type == FieldDescriptor.TYPE_BOOL:
            values = [True, False]
        else:  # integers
            values = [field.number + 300, field.number + 7]
        if field.is_repeated:
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, values[0])
    return message


def test_every_field_of_a_walked_request_decodes_like_protobuf():
    """The walker finds rows and raw_data by the numbers the descriptors give: a request with
    every field of DetectRequest and Tensor set decodes as protobuf decodes it."""
    data = filled(detector_pb2.DetectRequest(), wire.WALK_FROM_BYTES).SerializeToString()
    assert len(data) > wire.WALK_FROM_BYTES  # walked, not parsed by protobuf
    decoded = wire.decode_detect_request(data)
    assert decoded.rows_raw is not None and bytes(decoded.rows_raw) == bytes(range(256)) * (wire.WALK_FROM_BYTES // 256)
    assert_decodes_like_protobuf(data)


ENCODERS = {"length_tag", "length_delimited", "packed_doubles", "packed_uints", "repeated_strings", "explanations"}


@pytest.mark.parametrize("module", [wire, grpc_api], ids=lambda m: m.__name__)
def test_field_numbers_come_from_the_descriptors(module):
    """No field number written as a literal: not as a number handed to an encoder, not as
    `literal << 3` (a tag), not as a tag in bytes."""
    literals = []
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        encoder = isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ENCODERS
        if encoder and node.args and isinstance(node.args[0], ast.Constant):
            literals.append(ast.unparse(node))
        tag = isinstance(node, ast.BinOp) and isinstance(node.op, ast.LShift) and ast.unparse(node.right) == "3"
        if tag and isinstance(node.left, ast.Constant):
            literals.append(ast.unparse(node))
        if isinstance(node, ast.Constant) and isinstance(node.value, bytes) and node.value:
            literals.append(repr(node.value))
    assert literals == []


@pytest.mark.parametrize("cut", [1, 7, 1000])
def test_truncated_large_requests_are_refused(cut):
    data = large_request(models.normal_rows(4096, D, seed=3)).SerializeToString()
    with pytest.raises(wire.WireError):
        wire.decode_detect_request(data[:-cut])


# -- on a real server ------------------------------------------------------------------


def test_large_and_small_requests_score_alike_and_columns_are_honoured(routed):
    detector, _, young, older = routed
    rows = np.vstack([young, older])[:4000]
    ages = np.where(np.arange(len(rows)) < 2000, 4.0, 7.0)
    big = detector.stub.Detect(detect_request("drawings", rows, routing_values=ages.tolist()))
    small = detector.stub.Detect(detect_request("drawings", rows[-3:], routing_values=[7.0]))
    np.testing.assert_array_equal(big.scores[-3:], small.scores)
    assert list(big.group_names) == ["age_3_6", "age_6_9"]
    assert list(big.row_groups) == [0] * 2000 + [1] * 2000
    assert list(big.groups) == ["age_3_6"] * 2000 + ["age_6_9"] * 2000
    assert list(small.group_names) == ["age_6_9"] and len(small.row_groups) == 0

    lean = detector.stub.Detect(
        detect_request(
            "drawings",
            rows,
            routing_values=ages.tolist(),
            columns=[Column.DETECT_COLUMN_SCORES, Column.DETECT_COLUMN_IS_ANOMALY],
        )
    )
    assert list(lean.scores) == list(big.scores) and list(lean.is_anomaly) == list(big.is_anomaly)
    assert len(lean.groups) == 0 and len(lean.normalized_scores) == 0 and len(lean.confidences) == 0
    assert list(lean.row_groups) == list(big.row_groups)


def test_a_garbled_large_request_is_invalid_argument(routed):
    detector = routed[0]
    data = bytes(detect_request("drawings", models.normal_rows(4096, D, seed=4)).SerializeToString())
    broken = data[:-5]  # the rows field now claims more bytes than the request has
    call = detector.channel.unary_unary("/oddity.v1.Detector/Detect")
    with pytest.raises(grpc.RpcError) as error:
        call(broken, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid protobuf message" in error.value.details()
