"""The one client per remote service, against a real embedder: vectors, the status map,
request ids on the wire, and a target that is down."""

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from oddity.common import errors
from oddity.common.clients import EmbedderClient, RetryPolicy
from oddity.common.logging import start_request
from tests.conftest import start_embedder
from tests.support.interceptors import RequestIds
from tests.support.servers import wait_models


@pytest.fixture(scope="module")
def embedder(shared_encoders):
    ids = RequestIds(lambda method: method.startswith("/oddity.v1.Embedder/"))
    handle = start_embedder(shared_encoders.cache_dir, shared_encoders.only("vit"), interceptors=[ids])
    wait_models(handle, timeout=120)
    handle.request_ids = ids
    yield handle
    handle.close()


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def run(coro_factory):
    """Run one client coroutine on a fresh loop (the client's channel belongs to that loop)."""

    async def main():
        return await coro_factory()

    return asyncio.run(main())


def test_embed_and_models(embedder):
    async def call():
        client = EmbedderClient(embedder.server.target)
        try:
            return await client.models(), await client.embed("vit", images=[png(1), png(2)])
        finally:
            await client.close()

    models, embeddings = run(call)
    assert [(m.name, m.modality, m.is_default) for m in models] == [("vit", "image", True)]
    assert embeddings.vectors.shape == (2, models[0].dimension)
    assert embeddings.vectors.dtype == np.float32
    assert (embeddings.model, embeddings.model_id) == ("vit", models[0].model_id)


def test_status_map_names_the_remote_service(embedder):
    target = embedder.server.target

    async def call(**kwargs):
        client = EmbedderClient(target)
        try:
            await client.embed(**kwargs)
        finally:
            await client.close()

    with pytest.raises(errors.InvalidArgument) as bad_item:
        run(lambda: call(model="vit", images=[png(1), b"not an image"]))
    assert bad_item.value.message.startswith(f"embedder at {target}: INVALID_ARGUMENT: item 1:")

    # The embedder does not serve the model: a configuration problem, not the caller's input.
    with pytest.raises(errors.FailedPrecondition) as unknown:
        run(lambda: call(model="nope", images=[png(1)]))
    assert unknown.value.message.startswith(f"embedder at {target}: NOT_FOUND: model 'nope' not found")


def test_request_id_goes_out_on_every_call(embedder):
    async def call():
        client = EmbedderClient(embedder.server.target)
        try:
            await client.embed("vit", images=[png(3)], request_id="job-42")
            start_request(request_id="rpc-7")  # as the server interceptor does for an incoming call
            await client.embed("vit", images=[png(4)])
        finally:
            await client.close()

    before = len(embedder.request_ids.seen)
    run(call)
    assert embedder.request_ids.seen[before:] == ["job-42", "rpc-7"]


def test_a_target_that_is_down_is_unavailable_once_the_retries_are_spent():
    # Nothing listens on port 1. Short backoffs so the retries are spent well before the deadline:
    # the call then ends on the last attempt's UNAVAILABLE, not on DEADLINE_EXCEEDED.
    retry = RetryPolicy(initial_backoff_seconds=0.05, max_backoff_seconds=0.1)

    async def call():
        client = EmbedderClient("127.0.0.1:1", timeout=30.0, retry=retry)
        try:
            with pytest.raises(errors.Unavailable) as down:
                await client.embed("vit", images=[b"x"])
            return down.value.message
        finally:
            await client.close()

    assert run(call).startswith("embedder at 127.0.0.1:1: UNAVAILABLE:")
