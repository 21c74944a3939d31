"""The embedder's /metrics after Embed calls: items by model and kind, batch sizes, the wait
in the batcher's queue, and preprocessing apart from inference."""

import io

import numpy as np
import pytest
from PIL import Image

from oddity.v1 import embedder_pb2
from tests.conftest import start_embedder
from tests.support.servers import wait_models

pytestmark = pytest.mark.slow  # a scenario through real services; `-m "not slow"` leaves it out

BATCH_SIZE = 8
DELAY_SECONDS = 0.05


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def embedder(shared_encoders):
    handle = start_embedder(
        shared_encoders.cache_dir,
        shared_encoders.models,
        max_batch_size=BATCH_SIZE,
        max_batch_delay_ms=DELAY_SECONDS * 1000,
    )
    wait_models(handle, timeout=120)
    yield handle
    handle.close()


def test_items_batches_queue_wait_and_stages(embedder):
    images = [embedder_pb2.EmbedItem(image=png(i)) for i in range(13)]
    embedder.stub.Embed(embedder_pb2.EmbedRequest(model="vit", items=images[:3]))
    # More items than a batch takes: two chunks, two ONNX calls (8 + 2 items).
    embedder.stub.Embed(embedder_pb2.EmbedRequest(model="vit", items=images[3:]))
    texts = [embedder_pb2.EmbedItem(text=t) for t in ("a red house", "two cats on a sofa")]
    embedder.stub.Embed(embedder_pb2.EmbedRequest(model="text", items=texts))

    def value(name, **labels):
        return embedder.metric(name, **labels)

    assert value("oddity_embedder_items_total", model="vit", kind="image") == 13
    assert value("oddity_embedder_items_total", model="text", kind="text") == 2
    assert value("oddity_embedder_items_total", model="vit", kind="text") == 0  # a model embeds one kind

    assert value("oddity_embedder_batch_items_count", model="vit") == 3
    assert value("oddity_embedder_batch_items_sum", model="vit") == 13
    assert value("oddity_embedder_batch_items_bucket", model="vit", le="2.0") == 1
    assert value("oddity_embedder_batch_items_bucket", model="vit", le="4.0") == 2
    assert value("oddity_embedder_batch_items_bucket", model="vit", le="8.0") == 3
    assert value("oddity_embedder_batch_items_count", model="text") == 1
    assert value("oddity_embedder_batch_items_sum", model="text") == 2

    # One wait per request chunk. A lone request smaller than a batch waits the whole batching
    # delay for company; the 10-item request's chunks (8 and 2) do not fit one batch together,
    # so the first to arrive starts when the second does.
    assert value("oddity_embedder_queue_wait_seconds_count", model="vit") == 3
    assert value("oddity_embedder_queue_wait_seconds_count", model="text") == 1
    assert value("oddity_embedder_queue_wait_seconds_sum", model="text") >= DELAY_SECONDS
    assert value("oddity_embedder_queue_wait_seconds_sum", model="vit") >= DELAY_SECONDS

    # Preprocessing per request chunk (decoding, checking) and per batch (stacking,
    # tokenizing); inference once per batch.
    for model, chunks, batches in (("vit", 3, 3), ("text", 1, 1)):
        assert value("oddity_embedder_preprocess_seconds_count", model=model, stage="request") == chunks
        assert value("oddity_embedder_preprocess_seconds_count", model=model, stage="batch") == batches
        assert value("oddity_embedder_inference_seconds_count", model=model) == batches
        assert value("oddity_embedder_inference_seconds_sum", model=model) > 0
        assert value("oddity_embedder_model_loaded", model=model) == 1
