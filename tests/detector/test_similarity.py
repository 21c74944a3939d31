"""Similar, Clusters and SuggestTags on a real detector serving indexed versions: a library of
three subjects (cats, dogs, cars: 50, 40 and 30 items) with metadata and tags, served with
exact search ("lib") and with an HNSW index ("hnsw"); filters, exclude_self, clusters and
assignment, tag suggestions from neighbours and from co-occurrence, every error with its
status; a version whose index is garbled (but hash-correct) is refused while the previous one
keeps serving; and a swap under load never mixes versions in one answer."""

import hashlib
import math
import threading
from functools import partial

import grpc
import numpy as np
import pytest

from oddity.common import bundle
from oddity.common.tensors import array_to_tensor
from oddity.trainer.index_builder import IndexSettings
from oddity.v1 import detector_pb2, manifest_pb2
from tests.conftest import start_detector
from tests.support import models
from tests.support.similarity import publish_indexed
from tests.support.waiting import wait_for

D = 16
SUBJECTS = ("cat", "dog", "car")
SIZES = (50, 40, 30)
N = sum(SIZES)
CENTERS = np.random.default_rng(7).standard_normal((3, D)).astype(np.float32) * 3


def library(seed: int = 0, prefix: str = "item-"):
    """Vectors, ids, metadata and tags of the three subjects; item i of a subject is black when
    i is odd, else white; cats and dogs are pets, cars go on roads."""
    rng = np.random.default_rng(seed)
    vectors: list[np.ndarray] = []
    ids: list[str] = []
    tags: list[list[str]] = []
    metadata: dict[str, list] = {"subject": [], "age": [], "weight": []}
    for s, (subject, size) in enumerate(zip(SUBJECTS, SIZES, strict=True)):
        for i in range(size):
            vectors.append(CENTERS[s] + rng.standard_normal(D).astype(np.float32) * 0.3)
            ids.append(f"{prefix}{len(ids)}")
            metadata["subject"].append(subject)
            metadata["age"].append(i % 10)
            metadata["weight"].append(i * 0.5)
            tags.append([subject, "pet" if subject != "car" else "road", "black" if i % 2 else "white"])
    return np.asarray(vectors, dtype=np.float32), ids, metadata, tags


def publish_library(repository, name: str, **kwargs) -> int:
    vectors, ids, metadata, tags = library()
    return publish_indexed(repository, name, vectors, ids=ids, metadata=metadata, tags=tags, **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    repository = tmp_path_factory.mktemp("similarity") / "models"
    repository.mkdir()
    publish_library(repository, "lib")
    publish_library(repository, "hnsw", settings=IndexSettings(approximate_from=50))
    # Many items pass a filter: HNSW restricted to them answers.
    rng = np.random.default_rng(3)
    big = np.vstack([rng.standard_normal((2000, 8)) * 0.3 + 3, rng.standard_normal((200, 8)) * 0.3 - 3])
    publish_indexed(
        repository,
        "big",
        big.astype(np.float32),
        metadata={"half": ["a"] * 2000 + ["b"] * 200, "rank": list(range(2200))},
        settings=IndexSettings(approximate_from=50),
    )
    models.publish_simple(
        repository, "plain", models.fit_pca_group(models.normal_rows(200, 4), components=1), dimension=4
    )
    text_source = manifest_pb2.EmbeddingSource(model="text", model_id="m", revision="r", dimension=D, modality="text")
    publish_indexed(repository, "sentences", library()[0], embedding=text_source)
    handle = start_detector(repository)
    wait_for(lambda: len(handle.stub.ListModels(detector_pb2.ListModelsRequest()).models) == 5, what="5 models")
    yield handle
    handle.close()


def by_id(item_id: str) -> detector_pb2.ItemQuery:
    return detector_pb2.ItemQuery(item_id=item_id)


def by_vector(vector) -> detector_pb2.ItemQuery:
    return detector_pb2.ItemQuery(vector=array_to_tensor(np.asarray(vector, dtype=np.float32)))


def similar(handle, model: str, query: detector_pb2.ItemQuery, **fields) -> detector_pb2.SimilarResponse:
    return handle.stub.Similar(detector_pb2.SimilarRequest(model=model, query=query, **fields), timeout=30)


def subject_of(item: detector_pb2.SimilarItem) -> str:
    return item.metadata["subject"]


# -- Similar --------------------------------------------------------------------------------


@pytest.mark.parametrize("model, approximate", [("lib", False), ("hnsw", True)])
def test_an_item_finds_its_own_subject_first(served, model, approximate):
    answer = similar(served, model, by_id("item-60"), top_k=5)  # a dog
    assert (answer.model, answer.version, answer.approximate) == (model, 1, approximate)
    assert answer.items[0].id == "item-60"
    assert answer.items[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [subject_of(i) for i in answer.items] == ["dog"] * 5
    similarities = [i.similarity for i in answer.items]
    assert similarities == sorted(similarities, reverse=True)


@pytest.mark.parametrize("model, approximate", [("lib", False), ("hnsw", True)])
def test_exclude_self_leaves_the_item_out_and_still_returns_k(served, model, approximate):
    answer = similar(served, model, by_id("item-60"), top_k=5, exclude_self=True)
    assert answer.approximate == approximate
    ids = [i.id for i in answer.items]
    assert len(ids) == 5
    assert "item-60" not in ids
    assert [subject_of(i) for i in answer.items] == ["dog"] * 5


@pytest.mark.parametrize("model", ["lib", "hnsw"])
def test_a_vector_finds_the_subject_it_lies_in(served, model):
    answer = similar(served, model, by_vector(CENTERS[2]), top_k=10)
    assert [subject_of(i) for i in answer.items] == ["car"] * 10


def test_a_1_x_d_vector_and_the_default_top_k(served):
    answer = similar(served, "lib", by_vector(CENTERS[0].reshape(1, D)))
    assert len(answer.items) == 10
    assert {subject_of(i) for i in answer.items} == {"cat"}


def test_items_carry_metadata_tags_and_cluster(served):
    item = similar(served, "lib", by_id("item-53"), top_k=1).items[0]  # dog number 3
    assert item.id == "item-53"
    assert dict(item.metadata) == {"subject": "dog", "age": "3", "weight": "1.5"}
    assert sorted(item.tags) == ["black", "dog", "pet"]
    assert item.text == ""  # no caption and no text: a catalog as those built before texts were kept
    clusters = served.stub.Clusters(detector_pb2.ClustersRequest(model="lib")).clusters
    dog_cluster = next(c.id for c in clusters if c.top_tags[0] == "dog")
    assert item.cluster == dog_cluster


@pytest.mark.parametrize("model", ["lib", "hnsw"])
def test_any_of_filter_keeps_only_matching_items(served, model):
    answer = similar(
        served,
        model,
        by_vector(CENTERS[0]),
        top_k=8,
        filters=[detector_pb2.MetadataFilter(column="subject", any_of=["car", "dog"])],
    )
    assert not answer.approximate  # few items pass: exact search over them
    assert len(answer.items) == 8
    assert {subject_of(i) for i in answer.items} <= {"car", "dog"}


def test_numeric_filters_by_range_and_by_value(served):
    ranged = similar(
        served,
        "lib",
        by_vector(CENTERS[1]),
        top_k=20,
        filters=[detector_pb2.MetadataFilter(column="age", min=3, max=4)],
    )
    assert len(ranged.items) == 20
    assert {i.metadata["age"] for i in ranged.items} == {"3", "4"}
    exact = similar(
        served,
        "lib",
        by_vector(CENTERS[1]),
        top_k=50,
        filters=[
            detector_pb2.MetadataFilter(column="age", any_of=["7"]),
            detector_pb2.MetadataFilter(column="subject", any_of=["dog"]),
        ],
    )
    assert len(exact.items) == 4  # dogs 7, 17, 27 and 37
    assert {(i.metadata["age"], subject_of(i)) for i in exact.items} == {("7", "dog")}


def test_with_tags_keeps_items_carrying_every_tag(served):
    answer = similar(served, "hnsw", by_vector(CENTERS[0]), top_k=100, with_tags=["black", "pet"])
    assert len(answer.items) == 45  # 25 black cats and 20 black dogs
    assert all({"black", "pet"} <= set(i.tags) for i in answer.items)


def test_an_unknown_tag_gives_an_empty_answer(served):
    answer = similar(served, "lib", by_vector(CENTERS[0]), with_tags=["unicorn"])
    assert (answer.version, len(answer.items)) == (1, 0)


def test_many_items_passing_a_filter_are_searched_with_hnsw(served):
    query = by_vector(np.full(8, -3.0))  # nearest to the "b" items, which the filter leaves out
    answer = similar(
        served,
        "big",
        query,
        top_k=10,
        filters=[detector_pb2.MetadataFilter(column="half", any_of=["a"])],
    )
    assert answer.approximate
    assert len(answer.items) == 10
    assert {i.metadata["half"] for i in answer.items} == {"a"}
    unfiltered = similar(served, "big", query, top_k=10)
    assert {i.metadata["half"] for i in unfiltered.items} == {"b"}


def test_answers_are_counted_by_model_method_and_index(served):
    labels = {"model": "hnsw", "method": "Similar", "approximate": "true"}
    names = ("oddity_detector_similarity_requests_total", "oddity_detector_similarity_seconds_count")
    before = [served.metric(name, **labels) for name in names]
    for _ in range(3):
        similar(served, "hnsw", by_id("item-1"))
    after = [served.metric(name, **labels) for name in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3]


# -- Clusters -------------------------------------------------------------------------------


def test_clusters_are_the_subjects_largest_first(served):
    answer = served.stub.Clusters(detector_pb2.ClustersRequest(model="lib"))
    assert (answer.model, answer.version, answer.unclustered) == ("lib", 1, 0)
    assert [c.size for c in answer.clusters] == [50, 40, 30]
    assert [c.top_tags[0] for c in answer.clusters] == ["cat", "dog", "car"]
    for cluster, subject in zip(answer.clusters, SUBJECTS, strict=True):
        assert len(cluster.representatives) == 5
        assert {subject_of(r) for r in cluster.representatives} == {subject}
        assert {r.cluster for r in cluster.representatives} == {cluster.id}
    two = served.stub.Clusters(detector_pb2.ClustersRequest(model="lib", representatives=2)).clusters
    assert [len(c.representatives) for c in two] == [2, 2, 2]


def test_new_items_join_the_nearest_cluster_or_are_new(served):
    far = np.random.default_rng(11).standard_normal(D).astype(np.float32) * 3
    answer = served.stub.Clusters(
        detector_pb2.ClustersRequest(model="lib", assign=[by_vector(CENTERS[2]), by_vector(far), by_id("item-0")])
    )
    ids = {c.top_tags[0]: c.id for c in answer.clusters}
    near, new, item = answer.assignments
    assert (near.cluster, near.is_new) == (ids["car"], False)
    assert near.similarity > 0.9
    assert (new.cluster, new.is_new) == (-1, True)
    assert new.similarity < near.similarity
    assert (item.cluster, item.is_new) == (ids["cat"], False)


# -- SuggestTags ----------------------------------------------------------------------------


def test_suggestions_from_neighbours_alone(served):
    answer = served.stub.SuggestTags(detector_pb2.SuggestTagsRequest(model="lib", query=by_vector(CENTERS[0])))
    assert (answer.model, answer.version) == ("lib", 1)
    tags = {s.tag: s for s in answer.suggestions}
    assert [s.tag for s in answer.suggestions[:2]] == ["cat", "pet"]
    for tag in ("cat", "pet"):
        assert tags[tag].score == pytest.approx(1.0)
        assert tags[tag].from_neighbours == pytest.approx(1.0)
    assert all(s.from_cooccurrence == 0 for s in answer.suggestions)
    assert tags["black"].score + tags["white"].score == pytest.approx(1.0)  # every item has one colour
    unknown = served.stub.SuggestTags(
        detector_pb2.SuggestTagsRequest(model="lib", query=by_vector(CENTERS[0]), tags=["unicorn"])
    )
    assert unknown.suggestions == answer.suggestions  # an unknown tag is ignored


def test_suggestions_from_cooccurrence_with_present_tags(served):
    answer = served.stub.SuggestTags(
        detector_pb2.SuggestTagsRequest(model="lib", query=by_vector(CENTERS[0]), tags=["car"], top_k=10)
    )
    tags = {s.tag: s for s in answer.suggestions}
    assert "car" not in tags
    # Every car is on a road: lift = 30 * 120 / (30 * 30) = 4, its support log 4 / log 10.
    road = tags["road"]
    assert road.from_neighbours == 0
    assert road.from_cooccurrence == pytest.approx(math.log(4) / math.log(10))
    assert road.score == pytest.approx(0.5 * road.from_cooccurrence)
    assert tags["cat"].score == pytest.approx(0.5)  # the neighbours' half


def test_an_items_own_tags_are_present_and_never_suggested(served):
    answer = served.stub.SuggestTags(
        detector_pb2.SuggestTagsRequest(model="lib", query=by_id("item-0"), neighbours=10, top_k=10)
    )
    suggested = [s.tag for s in answer.suggestions]
    assert not {"cat", "pet", "white"} & set(suggested)  # item-0 is a white cat
    assert suggested[0] == "black"
    black = answer.suggestions[0]
    assert black.score == pytest.approx(0.5 * black.from_neighbours)


# -- errors ---------------------------------------------------------------------------------


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code(), caught.value.details() or ""


ERRORS = [
    (
        "unknown column",
        lambda s: similar(
            s, "lib", by_id("item-0"), filters=[detector_pb2.MetadataFilter(column="colour", any_of=["x"])]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown metadata column 'colour'",
    ),
    (
        "range on text",
        lambda s: similar(s, "lib", by_id("item-0"), filters=[detector_pb2.MetadataFilter(column="subject", min=1)]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "metadata column 'subject' holds text",
    ),
    (
        "unknown item",
        lambda s: similar(s, "lib", by_id("item-999")),
        grpc.StatusCode.NOT_FOUND,
        "item 'item-999' is not in the index of model 'lib' v1",
    ),
    (
        "top_k too large",
        lambda s: similar(s, "lib", by_id("item-0"), top_k=1001),
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k is 1001; at most 1000",
    ),
    (
        "negative top_k",
        lambda s: similar(s, "lib", by_id("item-0"), top_k=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_k must be >= 0",
    ),
    (
        "wrong dimension",
        lambda s: similar(s, "lib", by_vector(np.ones(3))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "query.vector has 3 values; the index of model 'lib' v1 holds vectors of 16",
    ),
    (
        "non-finite vector",
        lambda s: similar(s, "lib", by_vector(np.full(D, np.nan))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "query.vector holds NaN or Inf",
    ),
    (
        "no index",
        lambda s: similar(s, "plain", by_vector(np.ones(4))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "version 1 of model 'plain' has no similarity index",
    ),
    (
        "version not serving",
        lambda s: similar(s, "lib", by_id("item-0"), version=7),
        grpc.StatusCode.NOT_FOUND,
        "version 7 of model 'lib' is not serving",
    ),
    (
        "empty query",
        lambda s: similar(s, "lib", detector_pb2.ItemQuery()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "query is empty",
    ),
    (
        "image on a text model",
        lambda s: similar(s, "sentences", detector_pb2.ItemQuery(image=b"\x89PNG")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'sentences' indexes texts, not images",
    ),
    (
        "image on a table index",
        lambda s: similar(s, "lib", detector_pb2.ItemQuery(image=b"\x89PNG")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'lib' indexes table rows, not images",
    ),
    (
        "text without a text model",
        lambda s: similar(s, "lib", detector_pb2.ItemQuery(text="puppy")),
        grpc.StatusCode.FAILED_PRECONDITION,
        "version 1 of model 'lib' cannot search by text",
    ),
    (
        "unknown item to assign",
        lambda s: s.stub.Clusters(detector_pb2.ClustersRequest(model="lib", assign=[by_id("item-1"), by_id("nope")])),
        grpc.StatusCode.NOT_FOUND,
        "assign[1]: item 'nope' is not in the index",
    ),
    (
        "too many neighbours",
        lambda s: s.stub.SuggestTags(
            detector_pb2.SuggestTagsRequest(model="lib", query=by_id("item-0"), neighbours=5000)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "neighbours is 5000; at most 1000",
    ),
    (
        "too many items to assign",
        lambda s: s.stub.Clusters(detector_pb2.ClustersRequest(model="lib", assign=[by_id("item-1")] * 1025)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the request assigns 1025 items; the limit is 1024",
    ),
]


@pytest.mark.parametrize("call, code, message", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_bad_requests_get_their_status(served, call, code, message):
    got_code, details = status_of(lambda: call(served))
    assert got_code == code, details
    assert message in details


def test_a_text_query_without_an_embedder_is_unavailable(served):
    # "sentences" was indexed from the `text` model's vectors; this detector has no embedder.
    code, details = status_of(lambda: similar(served, "sentences", detector_pb2.ItemQuery(text="a dog")))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert "no embedder is configured" in details


# -- versions -------------------------------------------------------------------------------


def test_a_garbled_index_is_refused_and_the_previous_version_keeps_serving(repository):
    detector = start_detector(repository, poll_interval_seconds=3600)  # versions come in by LoadModel only
    try:
        approximate = IndexSettings(approximate_from=50)
        assert publish_library(repository, "lib", settings=approximate) == 1
        detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="lib"))
        assert publish_library(repository, "lib", settings=approximate) == 2
        # Rewrite the HNSW file and give the manifest its new sha256: complete, but unloadable.
        folder = repository / "lib" / "2"
        garbage = np.random.default_rng(0).bytes((folder / "index_hnsw.faiss").stat().st_size)
        (folder / "index_hnsw.faiss").write_bytes(garbage)
        manifest = bundle.read_manifest(folder)
        manifest.similarity.approximate.sha256 = hashlib.sha256(garbage).hexdigest()
        (folder / bundle.MANIFEST_FILE).write_text(bundle.manifest_to_json(manifest))

        status = detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="lib")).status
        assert status.serving_version == 1
        assert "index_hnsw.faiss is not a FAISS index" in status.rejected_versions[2]
        answer = similar(detector, "lib", by_id("item-0"), top_k=3)
        assert (answer.version, answer.approximate, answer.items[0].id) == (1, True, "item-0")
    finally:
        detector.close()


def test_a_swap_under_load_never_mixes_versions(repository):
    def publish(version: int) -> None:
        vectors, ids, metadata, tags = library(seed=version, prefix=f"v{version}-")
        assert publish_indexed(repository, "live", vectors, ids=ids, metadata=metadata, tags=tags) == version

    publish(1)
    detector = start_detector(repository, poll_interval_seconds=0.1)
    stop = threading.Event()
    failures: list[str] = []
    answers: list[tuple[int, list[str]]] = []
    request = detector_pb2.SimilarRequest(model="live", query=by_vector(CENTERS[1]), top_k=20)

    def client() -> None:
        while not stop.is_set():
            try:
                answer = detector.stub.Similar(request, timeout=10)
            except grpc.RpcError as exc:
                failures.append(f"{exc.code()}: {exc.details()}")
                continue
            answers.append((answer.version, [i.id for i in answer.items]))

    def is_serving(version: int) -> bool:
        return detector.stub.GetModel(detector_pb2.GetModelRequest(model="live")).status.serving_version == version

    def answered(count: int) -> None:
        """Wait until the clients have had `count` more answers."""
        start = len(answers)
        wait_for(lambda: len(answers) >= start + count, what=f"{count} more answers")

    threads = [threading.Thread(target=client) for _ in range(2)]
    try:
        wait_for(partial(is_serving, 1), what="version 1")
        for thread in threads:
            thread.start()
        for version in (2, 3):
            answered(20)
            publish(version)
            wait_for(partial(is_serving, version), timeout=10, what=f"version {version}")
        answered(20)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        detector.close()

    assert failures == []
    for version, ids in answers:
        assert len(ids) == 20
        assert all(i.startswith(f"v{version}-") for i in ids), f"an answer of v{version} holds {ids}"
    assert {2, 3} <= {version for version, _ in answers}
