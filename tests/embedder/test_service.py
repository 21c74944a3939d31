"""The embedder on a real server: embeddings, batching, streaming, info, and bad input."""

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from oddity.embedder.models import ModelSource
from oddity.embedder.preprocessing import ImageLimits, decode_image
from oddity.embedder.settings import default_models
from oddity.v1 import embedder_pb2
from tests.conftest import start_embedder
from tests.support.servers import wait_models
from tests.support.waiting import wait_for

SERVICE = "oddity.v1.Embedder"


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def drawing(seed: int, size=(80, 60)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def vectors(response: embedder_pb2.EmbedResponse) -> np.ndarray:
    shape = list(response.embeddings.shape)
    return np.frombuffer(response.embeddings.raw_data, dtype="<f4").reshape(shape)


def images_request(images: list[bytes], model: str = "") -> embedder_pb2.EmbedRequest:
    return embedder_pb2.EmbedRequest(model=model, items=[embedder_pb2.EmbedItem(image=i) for i in images])


@pytest.fixture(scope="module")
def embedder(shared_encoders):
    handle = start_embedder(
        shared_encoders.cache_dir,
        shared_encoders.models,
        max_batch_size=8,
        max_batch_delay_ms=20,
        max_items_per_request=64,
        max_image_bytes=200_000,
        max_image_pixels=1_000_000,
    )
    wait_models(handle, timeout=120)
    yield handle
    handle.close()


def test_images_embed_the_same_alone_and_batched(embedder):
    images = [encode(drawing(i), "PNG") for i in range(12)]
    together = vectors(embedder.stub.Embed(images_request(images)))
    assert together.shape == (12, 32)

    def alone(image):
        return vectors(embedder.stub.Embed(images_request([image])))[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        separately = np.array(list(pool.map(alone, images)))
    np.testing.assert_allclose(separately, together, atol=1e-5)
    batches = embedder.metric("oddity_embedder_batch_items_count", model="vit")
    items = embedder.metric("oddity_embedder_batch_items_sum", model="vit")
    assert items == 24 and batches < 24 - 2, "concurrent requests were never batched together"


def test_every_accepted_format_and_mode(embedder):
    base = drawing(1)
    variants = {
        "png": encode(base, "PNG"),
        "jpeg": encode(base, "JPEG", quality=95),
        "bmp": encode(base, "BMP"),
        "webp": encode(base, "WEBP", lossless=True),
        "gif": encode(base.convert("P"), "GIF"),
        "gray": encode(base.convert("L"), "PNG"),
        "rgba": encode(base.convert("RGBA"), "PNG"),
    }
    result = vectors(embedder.stub.Embed(images_request(list(variants.values()))))
    assert result.shape == (7, 32) and np.isfinite(result).all()
    reference = result[0]
    close = [np.dot(v, reference) / np.linalg.norm(v) / np.linalg.norm(reference) for v in result]
    assert min(close[:4]) > 0.99  # lossless or near-lossless copies of one picture


def test_exif_orientation_is_applied(embedder):
    upright = drawing(2, size=(60, 80))
    rotated = upright.rotate(90, expand=True)  # stored sideways ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... tagged "rotate 90 clockwise to display" (undoes the counter-clockwise turn)
    tagged = encode(rotated, "PNG", exif=exif.tobytes())
    decoded = decode_image(tagged, 0, ImageLimits())
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(upright))
    result = vectors(embedder.stub.Embed(images_request([encode(upright, "PNG"), tagged, encode(rotated, "PNG")])))
    np.testing.assert_allclose(result[0], result[1], atol=1e-5)
    assert not np.allclose(result[0], result[2], atol=1e-3)  # without the tag it is another picture


def test_text_model_by_name_and_stream(embedder):
    texts = ["a house with a red roof", "a sun over the hills", "quarterly revenue grew"]
    request = embedder_pb2.EmbedRequest(model="text", items=[embedder_pb2.EmbedItem(text=t) for t in texts])
    response = embedder.stub.Embed(request)
    assert response.model == "text" and response.revision == "local"
    result = vectors(response)
    assert result.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(result, axis=1), 1, atol=1e-5)
    stream = embedder.stub.EmbedStream(iter([embedder_pb2.EmbedStreamRequest(request=request) for _ in range(3)]))
    streamed = [vectors(r.response) for r in stream]
    assert len(streamed) == 3
    for part in streamed:
        np.testing.assert_allclose(part, result, atol=1e-5)


def test_info_names_models_dimensions_and_preprocessing(embedder):
    info = {m.name: m for m in embedder.stub.GetInfo(embedder_pb2.GetInfoRequest()).models}
    assert info["vit"].dimension == 32 and info["vit"].modality == "image" and info["vit"].is_default
    assert info["text"].dimension == 384 and info["text"].modality == "text" and not info["text"].is_default
    assert "resize" in info["vit"].preprocessing and info["text"].preprocessing["max_length"] == "512"
    assert info["vit"].precision == embedder.service.models["vit"].model.meta["precision"]  # the one chosen


def bomb() -> bytes:
    return encode(Image.new("RGB", (2000, 2000), "white"), "PNG")  # 4 Mpx in a few kB


CASES = [
    (
        "corrupt bytes",
        images_request([encode(drawing(3), "PNG"), b"\x89PNG\r\n\x1a\nbroken"]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "item 1: not a readable image",
    ),
    ("no items", embedder_pb2.EmbedRequest(), grpc.StatusCode.INVALID_ARGUMENT, "the request has no items"),
    (
        "oversize bytes",
        images_request([np.random.default_rng(0).bytes(300_000)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "item 0: image has 300000 bytes; the limit is 200000",
    ),
    (
        "decompression bomb",
        images_request([bomb()]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "item 0: image is 2000x2000 pixels; the limit is 1000000",
    ),
    (
        "empty text",
        embedder_pb2.EmbedRequest(model="text", items=[embedder_pb2.EmbedItem(text="  ")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "item 0: empty text",
    ),
    (
        "text to an image model",
        embedder_pb2.EmbedRequest(items=[embedder_pb2.EmbedItem(text="hi")]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'vit' embeds images",
    ),
    (
        "empty item",
        embedder_pb2.EmbedRequest(items=[embedder_pb2.EmbedItem()]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "item 0",
    ),
    ("unknown model", images_request([b"x"], model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    (
        "too many items",
        images_request([b"x"] * 65),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the request has 65 items; the limit is 64",
    ),
]


@pytest.mark.parametrize(("name", "request_", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(embedder, name, request_, code, message):
    with pytest.raises(grpc.RpcError) as info:
        embedder.stub.Embed(request_, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert message in info.value.details()
    assert vectors(embedder.stub.Embed(images_request([encode(drawing(4), "PNG")]))).shape == (1, 32)


def test_unloadable_model_stays_not_serving_with_one_clear_line(tmp_path):
    models = {"vit": ModelSource(model_id="no-such-org/vit", modality="image")}
    handle = start_embedder(tmp_path / "cache", models)
    try:
        health = health_pb2_grpc.HealthStub(handle.channel)
        deadline = time.monotonic() + 30
        while not handle.service.errors:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE)).status
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
        assert "/path/to/local/dir" in handle.service.errors["vit"]
        with pytest.raises(grpc.RpcError) as info:
            handle.stub.Embed(images_request([encode(drawing(5), "PNG")]))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "/path/to/local/dir" in info.value.details()
    finally:
        handle.close()


@pytest.mark.slow
def test_the_default_models_offline_serve_text_and_name_the_image_model_that_failed(tmp_path, capfd, shared_encoders):
    """The default configuration on a machine without a hub: the MiniLM shipped offline serves,
    the ViT hub id is NOT_SERVING by name with one line saying what to do, and the embedder as a
    whole is ready. (MiniLM's export is copied in: exporting it is test_export.py's part.)"""
    shared_encoders.copy_export("text", tmp_path / "cache")
    embedder = start_embedder(tmp_path / "cache", default_models(), default_model="minilm")
    try:
        health = health_pb2_grpc.HealthStub(embedder.channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

        serving = health_pb2.HealthCheckResponse.SERVING
        wait_for(lambda: status("oddity.v1.Embedder") == serving, 120, "the embedder ready")
        wait_for(
            lambda: (
                status("oddity.v1.Embedder/vit") == health_pb2.HealthCheckResponse.NOT_SERVING
                and "vit" in embedder.service.errors
            ),
            120,
            "the image model reported",
        )
        assert status("oddity.v1.Embedder/minilm") == serving
        info = embedder.stub.GetInfo(embedder_pb2.GetInfoRequest(), timeout=10)
        assert [m.name for m in info.models] == ["minilm"]
        vectors = embedder.stub.Embed(
            embedder_pb2.EmbedRequest(model="minilm", items=[embedder_pb2.EmbedItem(text="a quiet sensor")]),
            timeout=30,
        )
        assert list(vectors.embeddings.shape) == [1, 384]
        with pytest.raises(grpc.RpcError) as refused:
            embedder.stub.Embed(
                embedder_pb2.EmbedRequest(model="vit", items=[embedder_pb2.EmbedItem(text="x")]), timeout=10
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "/path/to/local/dir" in refused.value.details()
    finally:
        embedder.close()
    failures = [
        json.loads(line)
        for line in capfd.readouterr().out.splitlines()
        if line.startswith("{") and '"model not loaded"' in line
    ]
    assert [(f["model"], f["model_id"]) for f in failures] == [("vit", "google/vit-base-patch16-224")]
