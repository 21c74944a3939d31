"""The SDK's similarity calls against a real detector serving an indexed library: three
subjects of different sizes (14 faces, 11 cars, 8 trees) as clustered vectors, each item with
an id, a subject, an age and tags. An item's nearest items are of its subject, filters keep
exactly the matching items, clusters recover the subjects largest first, new items join the
right cluster or none, tags come from the neighbours; failures are the domain errors."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from oddity.client import (
    DetectorClient,
    FailedPrecondition,
    Filter,
    NotFound,
    Query,
    SimilarItem,
    TagSuggestions,
)
from tests.client.similarity_library import SUBJECTS, TOP_TAGS, ServedLibrary, serve_library


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[ServedLibrary]:
    repository = tmp_path_factory.mktemp("similarity-sdk") / "models"
    repository.mkdir()
    yield from serve_library(repository)


@pytest.fixture
def client(served) -> Iterator[DetectorClient]:
    with DetectorClient(served.target) as detector:
        yield detector


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_the_nearest_items_of_an_item_are_of_its_subject(served, client, subject):
    library = served.library
    item = f"{subject}-1"
    result = client.similar("library", item_id=item, top_k=5, exclude_self=True)
    assert (result.model, result.version, result.approximate, result.matched_tags) == ("library", 1, False, [])
    assert len(result) == 5
    assert item not in result.ids
    assert set(result.ids) <= set(library.of(subject))
    similarities = [i.similarity for i in result]
    assert similarities == sorted(similarities, reverse=True)
    first = result.items[0]
    position = library.ids.index(first.id)
    assert set(first.tags) == set(library.tags[position])
    assert first.metadata["subject"] == subject
    assert float(first.metadata["age"]) == library.ages[position]
    assert first.cluster == list(SUBJECTS).index(subject)

    with_self = client.similar("library", item_id=item, top_k=5)
    assert with_self.ids[0] == item
    assert with_self.items[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert with_self.ids[1:] == result.ids[:4]


def test_a_vector_query_finds_the_items_of_its_subject(served, client):
    library = served.library
    result = client.similar("library", vector=library.centers["car"], top_k=len(library.of("car")))
    assert set(result.ids) == set(library.of("car"))
    as_row = client.similar("library", vector=library.centers["car"].reshape(1, -1).tolist(), top_k=3)
    assert as_row.ids == result.ids[:3]


def test_filters_keep_exactly_the_matching_items(served, client):
    library = served.library
    everything = len(library.ids)

    def ids(**fields) -> set[str]:
        return set(client.similar("library", item_id="face-0", top_k=everything, **fields).ids)

    assert ids(filters={"subject": "car"}) == set(library.of("car"))
    assert ids(filters={"subject": ["car", "tree"]}) == library.where(lambda s, a, t: s in ("car", "tree"))
    assert ids(filters={"age": (4, 6)}) == library.where(lambda s, a, t: 4 <= a <= 6)
    assert ids(filters={"age": 7}) == library.where(lambda s, a, t: a == 7)
    assert ids(filters={"age": (None, 4)}) == library.where(lambda s, a, t: a <= 4)
    assert ids(filters=[Filter.equals("subject", "face", "tree"), Filter.at_least("age", 8)]) == library.where(
        lambda s, a, t: s in ("face", "tree") and a >= 8
    )
    assert ids(with_tags=["smile"]) == library.where(lambda s, a, t: "smile" in t)
    assert ids(filters={"subject": "face"}, with_tags=["smile"], exclude_self=True) == library.where(
        lambda s, a, t: "smile" in t
    ) - {"face-0"}


def test_the_frame_has_a_row_per_item_and_a_column_per_metadata_column(client):
    frame = client.similar("library", item_id="tree-2", top_k=3).to_frame()
    assert list(frame.columns) == ["id", "similarity", "cluster", "tags", "age", "subject"]
    assert frame["id"].iloc[0] == "tree-2"
    assert set(frame["tags"].iloc[0]) == {"tree", "green", "autumn"}
    assert frame["subject"].tolist() == ["tree"] * 3
    assert frame["cluster"].tolist() == [2, 2, 2]


def test_a_query_is_exactly_one_of_id_vector_image_text(client):
    with pytest.raises(ValueError, match=r"exactly one of item_id, vector, image, text \(got none\)"):
        client.similar("library")
    with pytest.raises(ValueError, match=r"\(got item_id, text\)"):
        client.similar("library", item_id="face-0", text="face")
    with pytest.raises(TypeError, match=r"Query\.by_id"):
        client.clusters("library", assign=["face-0"])
    with pytest.raises(ValueError, match="keeps nothing"):
        client.similar("library", item_id="face-0", filters={"age": (6, 4)})


def test_clusters_recover_the_subjects_largest_first(served, client):
    library = served.library
    result = client.clusters("library", representatives=3)
    assert (result.model, result.version, result.unclustered, result.assignments) == ("library", 1, 0, [])
    assert [(c.id, c.size) for c in result.clusters] == [(0, 14), (1, 11), (2, 8)]
    for cluster, subject in zip(result.clusters, SUBJECTS, strict=True):
        assert cluster.top_tags == TOP_TAGS[subject]
        assert len(cluster.representatives) == 3
        assert {r.id for r in cluster.representatives} <= set(library.of(subject))
        assert {r.cluster for r in cluster.representatives} == {cluster.id}


def test_new_items_join_the_nearest_cluster_or_none(served, client):
    library = served.library
    result = client.clusters(
        "library",
        representatives=1,
        assign=[
            library.centers["car"].astype(np.float32),
            Query.by_id("tree-3"),
            Query.by_vector(library.far_vector()),
        ],
    )
    assert [(a.cluster, a.is_new) for a in result.assignments] == [(1, False), (2, False), (None, True)]
    assert result.assignments[0].similarity > 0.9
    assert result.assignments[2].similarity < 0.5


def test_tags_are_suggested_from_the_neighbours(served, client):
    # face-1 is tagged face and person; half of its neighbours also carry smile.
    result = client.suggest_tags("library", item_id="face-1", top_k=5, neighbours=10)
    assert isinstance(result, TagSuggestions)
    assert (result.model, result.version) == ("library", 1)
    assert result.tags == ["smile"]  # face and person are its own
    first = result.suggestions[0]
    assert 0 < first.from_neighbours < 1
    assert first.from_cooccurrence > 0  # smile goes with face and person

    # A vector near the cars, said to carry "car" already: road is what goes with it.
    by_vector = client.suggest_tags("library", vector=served.library.centers["car"], tags=["car"], top_k=1)
    assert by_vector.tags == ["road"]


def test_failures_are_the_domain_errors_with_the_status(served, client):
    with pytest.raises(NotFound) as unknown_model:
        client.similar("nope", item_id="face-0")
    assert unknown_model.value.message.startswith(f"detector at {served.target}: NOT_FOUND: ")
    with pytest.raises(NotFound, match="no-such-item"):
        client.similar("library", item_id="no-such-item")
    with pytest.raises(FailedPrecondition, match="FAILED_PRECONDITION"):
        client.similar("sensors", vector=np.zeros(4, np.float32))
    with pytest.raises(FailedPrecondition, match="FAILED_PRECONDITION"):
        client.suggest_tags("library", text="a smiling face")


def test_results_are_plain_objects(client):
    item = client.similar("library", item_id="car-0", top_k=1).items[0]
    assert item == SimilarItem(
        id="car-0",
        similarity=item.similarity,
        metadata={"subject": "car", "age": item.metadata["age"]},
        tags=("car", "road", "red"),
        cluster=1,
    )
    assert item.to_dict()["tags"] == ["car", "road", "red"]
