"""Property-based tests of request decoding: any bytes, any shapes and any field values sent
to Detect, DetectImages, Embed and Train get a response or a clean status — never INTERNAL,
UNKNOWN, a hang (DEADLINE_EXCEEDED) or a dead server — and any dataset.yaml gives a spec or
the spec error that names the problem.

One stack serves every example: an embedder with a small image model, a detector with a
tabular model and an image model over that embedder, and a trainer with a small dataset."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from oddity.trainer.spec import SpecError, load_spec
from oddity.v1 import detector_pb2, embedder_pb2, tensor_pb2, trainer_pb2
from tests.conftest import ServiceHandle, start_detector, start_embedder, start_trainer
from tests.support import datasets, models
from tests.support.client import detect_request
from tests.support.servers import wait_models

D = 4
#: Codes that mean the server broke, hung or hid a bug; every other code is a clean refusal.
BROKEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Stack:
    embedder: ServiceHandle
    detector: ServiceHandle
    trainer: ServiceHandle


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared_encoders) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("fuzz")
    embedder = start_embedder(shared_encoders.cache_dir, shared_encoders.only("vit"))
    repository = root / "models"
    repository.mkdir()
    data_volume = root / "data"
    (data_volume / "datasets").mkdir(parents=True)
    try:
        wait_models(embedder, timeout=120)
        served = embedder.stub.GetInfo(embedder_pb2.GetInfoRequest(model="vit")).models[0]
        models.publish_image_model(repository, served)
        fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
        models.publish_simple(repository, "m", fit, dimension=D)
        detector = start_detector(repository, embedder=embedder.server.target, embedder_timeout_seconds=30)
        # Too few rows to train: a Train that gets through fails its job quickly.
        spec = {"sources": [{"path": "*.csv"}], "retrain": {"policy": "manual"}}
        datasets.write_dataset(data_volume, "tiny", spec, {"rows.csv": datasets.sensor_frame(20)})
        trainer = start_trainer(data_volume, repository, embedder=embedder.server.target)
    except BaseException:
        embedder.close()
        raise
    yield Stack(embedder, detector, trainer)
    trainer.close()
    detector.close()
    embedder.close()


def clean(call, request) -> None:
    """The call answers, or refuses with a clean status."""
    try:
        call(request, timeout=20)
    except grpc.RpcError as exc:
        assert exc.code() not in BROKEN, f"{exc.code()}: {exc.details()}"
        assert exc.details(), "a refusal without a message"


def still_serving(stack: Stack) -> None:
    response = stack.detector.stub.Detect(detect_request("m", models.normal_rows(2, D)), timeout=20)
    assert len(response.scores) == 2


def raw(handle: ServiceHandle, service: str, method: str):
    return handle.channel.unary_unary(f"/oddity.v1.{service}/{method}")  # bytes in, bytes out


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


VALID_PNG = png((16, 16))
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)
doubles = st.floats(allow_nan=True, allow_infinity=True)
names = st.sampled_from(["m", "pictures", "vit", "", "nope", "../m", "m/1", "M"]) | st.text(max_size=12)


@st.composite
def tensors(draw) -> tensor_pb2.Tensor:
    if draw(st.booleans()):  # well formed [n, d], odd values
        n, d = draw(st.integers(0, 5)), draw(st.integers(0, 6))
        values = draw(st.lists(floats, min_size=n * d, max_size=n * d))
        as_raw = draw(st.booleans())
        return tensor_pb2.Tensor(
            shape=[n, d],
            raw_data=np.asarray(values, dtype="<f4").tobytes() if as_raw else b"",
            values=[] if as_raw else values,
        )
    return tensor_pb2.Tensor(
        shape=draw(st.lists(st.integers(-(2**40), 2**40), max_size=4)),
        raw_data=draw(st.binary(max_size=64)),
        values=draw(st.lists(floats, max_size=16)),
    )


images = st.sampled_from([VALID_PNG, VALID_PNG[:40], png((1, 1), "L"), png((3, 200), "RGBA"), b""]) | st.binary(
    max_size=256
)


@FUZZ
@given(
    data=st.binary(max_size=512),
    target=st.sampled_from(
        [
            ("detector", "Detector", "Detect"),
            ("detector", "Detector", "DetectImages"),
            ("embedder", "Embedder", "Embed"),
            ("trainer", "Trainer", "Train"),
        ]
    ),
)
def test_any_bytes_get_a_clean_status(stack, data, target):
    attribute, service, method = target
    clean(raw(getattr(stack, attribute), service, method), data)


@FUZZ
@given(
    model=names,
    version=st.integers(-(2**63), 2**63 - 1),
    rows=tensors(),
    feature_names=st.lists(st.text(max_size=6), max_size=6),
    routing_values=st.lists(doubles, max_size=6),
    threshold_percentile=st.none() | doubles,
    explain_top_k=st.integers(0, 2**32 - 1),
)
def test_any_detect_request_gets_a_clean_status(
    stack, model, version, rows, feature_names, routing_values, threshold_percentile, explain_top_k
):
    request = detector_pb2.DetectRequest(
        model=model,
        version=version,
        rows=rows,
        feature_names=feature_names,
        routing_values=routing_values,
        explain_top_k=explain_top_k,
    )
    if threshold_percentile is not None:
        request.threshold_percentile = threshold_percentile
    clean(stack.detector.stub.Detect, request)


@FUZZ
@given(
    model=names,
    images=st.lists(images, max_size=3),
    texts=st.lists(st.text(max_size=40), max_size=2),
    routing_values=st.lists(doubles, max_size=4),
    extra_features=st.none() | tensors(),
    threshold_percentile=st.none() | doubles,
)
def test_any_detect_images_request_gets_a_clean_status(
    stack, model, images, texts, routing_values, extra_features, threshold_percentile
):
    request = detector_pb2.DetectImagesRequest(model=model, images=images, texts=texts, routing_values=routing_values)
    if extra_features is not None:
        request.extra_features.CopyFrom(extra_features)
    if threshold_percentile is not None:
        request.threshold_percentile = threshold_percentile
    clean(stack.detector.stub.DetectImages, request)


@FUZZ
@given(
    model=names,
    items=st.lists(
        st.builds(embedder_pb2.EmbedItem, image=images)
        | st.builds(embedder_pb2.EmbedItem, text=st.text(max_size=80))
        | st.just(embedder_pb2.EmbedItem()),
        max_size=4,
    ),
)
def test_any_embed_request_gets_a_clean_status(stack, model, items):
    clean(stack.embedder.stub.Embed, embedder_pb2.EmbedRequest(model=model, items=items))


@FUZZ
@given(
    dataset=st.sampled_from(["tiny", "", "nope", "../tiny", "tiny/..", ".oddity"]) | st.text(max_size=12),
    force=st.booleans(),
    data_path=st.sampled_from(["", "datasets/tiny/rows.csv", "../../etc/passwd", "/etc/passwd", "datasets"])
    | st.text(max_size=20),
    model_kind=st.sampled_from(["", "auto", "knn", "random_forest", "nope"]) | st.text(max_size=8),
)
@pytest.mark.slow
def test_any_train_request_gets_a_clean_status(stack, dataset, force, data_path, model_kind):
    request = trainer_pb2.TrainRequest(dataset=dataset, force=force, data_path=data_path, model_kind=model_kind)
    clean(stack.trainer.stub.Train, request)


def test_the_stack_serves_after_the_fuzzing(stack):
    still_serving(stack)
    info = stack.embedder.stub.GetInfo(embedder_pb2.GetInfoRequest(model="vit"), timeout=20)
    assert info.models[0].name == "vit"


SPEC_KEYS = [
    "name",
    "sources",
    "images",
    "texts",
    "features",
    "label",
    "routing",
    "model",
    "min_samples",
    "threshold_percentile",
    "retrain",
    "validation",
    "keep_versions",
    "embedder",
    "path",
    "kind",
    "params",
    "policy",
    "key",
    "bounds",
    "include",
    "exclude",
    "epochs",
    "debounce_seconds",
    "ready_marker",
]
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | doubles | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(SPEC_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)


def parse(folder: Path, text: str) -> None:
    (folder / "dataset.yaml").write_text(text)
    try:
        load_spec(folder)
    except SpecError as exc:
        assert str(exc), "a spec error without a message"


@pytest.mark.slow
@FUZZ
@given(value=st.dictionaries(st.sampled_from(SPEC_KEYS), yaml_values, max_size=8))
def test_any_dataset_yaml_mapping_gives_a_spec_or_a_spec_error(tmp_path_factory, value):
    folder = tmp_path_factory.mktemp("sensors")
    parse(folder, yaml.safe_dump(value))


@FUZZ
@given(text=st.text(max_size=300) | st.sampled_from(["", "- a\n- b", "a: [", "{{{", "!!python/object:os.system x"]))
def test_any_dataset_yaml_text_gives_a_spec_or_a_spec_error(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("sensors")
    parse(folder, text)
