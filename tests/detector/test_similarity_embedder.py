"""Image and text queries through a real embedder (a tiny ViT and all-MiniLM-L6-v2): an image
finds itself among indexed drawings; a word finds items tagged with its synonym through the
tags' text vectors; a text finds the closest sentence of a text-embedding index; an embedder
that is down answers UNAVAILABLE and one serving other weights FAILED_PRECONDITION."""

import socket

import grpc
import numpy as np
import pytest

from oddity.common.tensors import tensor_to_array
from oddity.v1 import detector_pb2, embedder_pb2, manifest_pb2
from tests.conftest import start_detector, start_embedder
from tests.support import drawings
from tests.support.servers import wait_models
from tests.support.similarity import publish_indexed
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow  # a scenario through real services; `-m "not slow"` leaves it out

PICTURES = 24
# Item i of the pictures is tagged TAGS[i % 3] and captioned CAPTIONS[i % 3].
TAGS = ("dog", "automobile", "flower")
CAPTIONS = ("a dog sleeping on the sofa", "a red automobile on a wet road", "a bunch of flowers in a vase")
SENTENCES = (
    "a puppy is chasing a ball in the garden",
    "the stock market fell sharply this morning",
    "add the flour and bake the cake for forty minutes",
    "the rocket lifted off and reached orbit",
    "heavy rain is expected over the weekend",
)


def source(info: embedder_pb2.ModelInfo) -> manifest_pb2.EmbeddingSource:
    return manifest_pb2.EmbeddingSource(
        model=info.name,
        model_id=info.model_id,
        revision=info.revision,
        dimension=info.dimension,
        modality=info.modality,
    )


def embed(embedder, model: str, *, images=(), texts=()) -> np.ndarray:
    items = [embedder_pb2.EmbedItem(image=i) for i in images] + [embedder_pb2.EmbedItem(text=t) for t in texts]
    response = embedder.stub.Embed(embedder_pb2.EmbedRequest(model=model, items=items), timeout=60)
    return tensor_to_array(response.embeddings, field="embeddings")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, shared_encoders):
    root = tmp_path_factory.mktemp("similarity-embedder")
    embedder = start_embedder(shared_encoders.cache_dir, shared_encoders.models)
    wait_models(embedder, timeout=180)
    info = {m.name: m for m in embedder.stub.GetInfo(embedder_pb2.GetInfoRequest()).models}
    vit, text = source(info["vit"]), source(info["text"])

    repository = root / "models"
    repository.mkdir()
    rng = np.random.default_rng(0)
    images = [drawings.drawing(float(age), rng) for age in rng.uniform(3, 12, PICTURES)]
    publish_indexed(
        repository,
        "pictures",
        embed(embedder, "vit", images=images),
        ids=[f"pic-{i}" for i in range(PICTURES)],
        tags=[[TAGS[i % 3]] for i in range(PICTURES)],
        captions=[CAPTIONS[i % 3] for i in range(PICTURES)],
        embedding=vit,
        text_embedder=lambda texts: embed(embedder, "text", texts=texts),
        text_model=text,
    )
    stale = manifest_pb2.EmbeddingSource()
    stale.CopyFrom(vit)
    stale.revision = "an-older-revision"
    publish_indexed(repository, "stale", embed(embedder, "vit", images=images), embedding=stale)
    publish_indexed(
        repository,
        "sentences",
        embed(embedder, "text", texts=list(SENTENCES)),
        ids=[f"s{i}" for i in range(len(SENTENCES))],
        embedding=text,
    )
    detector = start_detector(repository, embedder=embedder.server.target)
    wait_for(lambda: len(detector.stub.ListModels(detector_pb2.ListModelsRequest()).models) == 3, what="3 models")
    yield detector, images, repository
    detector.close()
    embedder.close()


def similar(detector, model: str, query: detector_pb2.ItemQuery, **fields) -> detector_pb2.SimilarResponse:
    return detector.stub.Similar(detector_pb2.SimilarRequest(model=model, query=query, **fields), timeout=60)


def test_an_image_finds_itself(stack):
    detector, images, _ = stack
    answer = similar(detector, "pictures", detector_pb2.ItemQuery(image=images[4]), top_k=3)
    assert (answer.model, answer.version) == ("pictures", 1)
    assert answer.items[0].id == "pic-4"
    assert answer.items[0].similarity == pytest.approx(1.0, abs=1e-3)


def test_an_image_is_assigned_as_its_item_is(stack):
    detector, images, _ = stack
    answer = detector.stub.Clusters(
        detector_pb2.ClustersRequest(
            model="pictures",
            assign=[detector_pb2.ItemQuery(image=images[7]), detector_pb2.ItemQuery(item_id="pic-7")],
        ),
        timeout=60,
    )
    by_image, by_item = answer.assignments
    assert (by_image.cluster, by_image.is_new) == (by_item.cluster, by_item.is_new)
    assert by_image.similarity == pytest.approx(by_item.similarity, abs=1e-3)


def test_a_word_finds_items_tagged_with_its_synonym(stack):
    detector, _, _ = stack
    answer = similar(detector, "pictures", detector_pb2.ItemQuery(text="puppy"), top_k=5)
    assert answer.matched_tags[0].tag == "dog"
    assert answer.matched_tags[0].similarity >= 0.5
    similarities = [t.similarity for t in answer.matched_tags]
    assert similarities == sorted(similarities, reverse=True)
    assert len(answer.items) == 5
    assert all(item.tags == ["dog"] for item in answer.items)
    car = similar(detector, "pictures", detector_pb2.ItemQuery(text="car"), top_k=5)
    assert all(item.tags == ["automobile"] for item in car.items)


def test_tags_suggested_for_a_text_come_from_the_items_it_matches(stack):
    detector, _, _ = stack
    answer = detector.stub.SuggestTags(
        detector_pb2.SuggestTagsRequest(model="pictures", query=detector_pb2.ItemQuery(text="a bouquet of roses")),
        timeout=60,
    )
    assert answer.suggestions[0].tag == "flower"


def test_a_text_finds_the_closest_sentence_of_a_text_index(stack):
    detector, _, _ = stack
    answer = similar(detector, "sentences", detector_pb2.ItemQuery(text="a young dog playing outside"), top_k=2)
    assert answer.items[0].id == "s0"
    assert not answer.matched_tags


def test_an_image_query_on_a_text_index_is_invalid(stack):
    detector, images, _ = stack
    with pytest.raises(grpc.RpcError) as caught:
        similar(detector, "sentences", detector_pb2.ItemQuery(image=images[0]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model 'sentences' indexes texts, not images" in (caught.value.details() or "")


def test_an_embedder_serving_other_weights_is_refused(stack):
    detector, images, _ = stack
    with pytest.raises(grpc.RpcError) as caught:
        similar(detector, "stale", detector_pb2.ItemQuery(image=images[0]))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "revision an-older-revision" in (caught.value.details() or "")


def test_an_embedder_that_is_down_is_unavailable(stack):
    _, images, repository = stack
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    detector = start_detector(repository, embedder=f"127.0.0.1:{port}", embedder_timeout_seconds=0.5)
    try:
        wait_for(lambda: len(detector.stub.ListModels(detector_pb2.ListModelsRequest()).models) == 3, what="3 models")
        with pytest.raises(grpc.RpcError) as caught:
            similar(detector, "pictures", detector_pb2.ItemQuery(image=images[0]))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "embedder" in (caught.value.details() or "")
    finally:
        detector.close()
