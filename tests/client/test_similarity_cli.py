"""`oddity similar`, `oddity clusters` and `oddity tags` against a real detector: on the
indexed library of the SDK tests (vectors of three subjects) the tables and JSON show what the
SDK answers, `--where` keeps exactly the matching items, bad filters and queries are usage
errors that name the option, refusals exit 1 with the status. Then images and texts through a
real embedder (a tiny ViT for drawings, MiniLM for texts): an image finds itself first, "puppy"
finds the items tagged dog and says which tag matched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oddity.cli import output
from oddity.client import DetectorClient, EmbedderClient, Query, SimilarResult
from oddity.v1 import embedder_pb2, manifest_pb2
from tests.client.conftest import invoke, stdout_of, usage_error
from tests.client.similarity_library import HALF_TAG, SUBJECTS, ServedLibrary, serve_library
from tests.conftest import ServiceHandle, start_detector
from tests.support import drawings
from tests.support.similarity import publish_indexed


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[ServedLibrary]:
    repository = tmp_path_factory.mktemp("similarity-cli") / "models"
    repository.mkdir()
    yield from serve_library(repository)


@pytest.fixture
def sdk(served) -> Iterator[DetectorClient]:
    with DetectorClient(served.target) as detector:
        yield detector


def run(served, *args: object):
    """`oddity ARGS... --detector <the served detector>`, in-process."""
    return invoke(CliRunner(), *args, "--detector", served.target)


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in `text`, as cells."""
    return [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]


def similar_json(served, *args: object) -> dict:
    result = run(served, "similar", "library", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(stdout_of(result))


def test_similar_prints_the_nearest_items_as_json(served, sdk):
    expected = sdk.similar("library", item_id="face-1", top_k=5, exclude_self=True)
    printed = similar_json(served, "--id", "face-1", "-k", 5, "--exclude-self")
    assert (printed["model"], printed["version"], printed["approximate"]) == ("library", 1, False)
    assert printed["matched_tags"] == []
    assert [item["rank"] for item in printed["items"]] == [1, 2, 3, 4, 5]
    assert [item["id"] for item in printed["items"]] == expected.ids
    assert {item["id"] for item in printed["items"]} <= set(served.library.of("face"))
    first = printed["items"][0]
    assert first == {
        "rank": 1,
        "id": expected.items[0].id,
        "similarity": expected.items[0].similarity,
        "cluster": 0,
        "tags": list(expected.items[0].tags),
        "metadata": expected.items[0].metadata,
        "text": "",
    }


def expected_table(result: SimilarResult) -> list[list[str]]:
    return [
        [str(rank), item.id, output.cell(item.similarity), str(item.cluster), ", ".join(item.tags)]
        + [item.metadata[c] for c in ("age", "subject")]
        for rank, item in enumerate(result.items, 1)
    ]


def test_similar_prints_a_table_with_the_version_that_answered(served, sdk):
    result = run(served, "similar", "library", "--id", "tree-2", "-k", 4)
    assert result.exit_code == 0, result.stderr
    printed = stdout_of(result)
    assert printed.splitlines()[0].strip() == "library v1 (exact search)"
    header = next(line for line in printed.splitlines() if line.startswith("┃"))
    columns = ["rank", "id", "similarity", "cluster", "tags", "age", "subject"]
    assert [c.strip() for c in header.split("┃")[1:-1]] == columns
    assert table_rows(printed) == expected_table(sdk.similar("library", item_id="tree-2", top_k=4))


def test_where_keeps_exactly_the_matching_items(served):
    library = served.library
    everything = len(library.ids)

    def ids(*args: object) -> set[str]:
        return {item["id"] for item in similar_json(served, "--id", "face-0", "-k", everything, *args)["items"]}

    assert ids("--where", "subject=car,tree", "--where", "age>=5", "--where", "age <= 8") == library.where(
        lambda s, a, t: s in ("car", "tree") and 5 <= a <= 8
    )
    assert ids("--where", "age=7") == library.where(lambda s, a, t: a == 7)
    assert ids("--with-tag", "smile", "--with-tag", "face", "--exclude-self") == library.where(
        lambda s, a, t: "smile" in t
    ) - {"face-0"}


def test_a_vector_query_answers_as_the_sdk(served, sdk):
    center = served.library.centers["car"].astype(np.float32)
    expected = sdk.similar("library", vector=center, top_k=6)
    printed = similar_json(served, "--vector", ",".join(repr(float(x)) for x in center), "-k", 6)
    assert [item["id"] for item in printed["items"]] == expected.ids
    assert set(expected.ids) <= set(served.library.of("car"))


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("age", "'age': give COLUMN=VALUE[,VALUE...], COLUMN>=NUMBER or COLUMN<=NUMBER"),
        ("age>3", "'age>3': > is not supported"),
        ("=face", "'=face': give COLUMN=VALUE"),
        ("age>=old", "'age>=old': 'old' is not a number"),
        ("subject=face,,car", "'subject=face,,car': an empty value"),
    ],
)
def test_a_bad_where_is_a_usage_error_that_names_it(served, where, message):
    result = run(served, "similar", "library", "--id", "face-0", "--where", where)
    assert result.exit_code == 2
    assert f"Invalid value for --where: {message}" in usage_error(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give exactly one of --id, --image, --text or --vector (got none)"),
        (
            ("--id", "face-0", "--text", "face"),
            "give exactly one of --id, --image, --text or --vector (got --id, --text)",
        ),
        (("--vector", "1,x"), "Invalid value for --vector: give numbers separated by commas"),
        (("--text", "face", "--exclude-self"), "Invalid value for --exclude-self: only an --id query"),
    ],
)
def test_a_query_is_exactly_one_option(served, args, message):
    result = run(served, "similar", "library", *args)
    assert result.exit_code == 2
    assert message in usage_error(result)


def test_refusals_exit_1_with_the_status(served):
    unknown = run(served, "similar", "nope", "--id", "face-0")
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith(f"error: detector at {served.target}: NOT_FOUND: ")
    column = run(served, "similar", "library", "--id", "face-0", "--where", "colour=red")
    assert column.exit_code == 1
    assert "INVALID_ARGUMENT: filter on unknown metadata column 'colour'" in column.stderr
    no_text = run(served, "tags", "library", "--text", "a smiling face")
    assert no_text.exit_code == 1
    assert "FAILED_PRECONDITION" in no_text.stderr


def test_clusters_lists_the_subjects_and_assigns_items(served):
    result = run(served, "clusters", "library", "-r", 2, "--assign-id", "tree-3", "--assign-id", "car-0", "--json")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(stdout_of(result))
    assert (printed["model"], printed["version"], printed["unclustered"]) == ("library", 1, 0)
    assert [(c["id"], c["size"]) for c in printed["clusters"]] == [(0, 14), (1, 11), (2, 8)]
    for cluster, subject in zip(printed["clusters"], SUBJECTS, strict=True):
        assert len(cluster["representatives"]) == 2
        assert {r["id"] for r in cluster["representatives"]} <= set(served.library.of(subject))
    assert [(a["item"], a["cluster"], a["is_new"]) for a in printed["assignments"]] == [
        ("id tree-3", 2, False),
        ("id car-0", 1, False),
    ]

    shown = run(served, "clusters", "library", "-r", 2, "--assign-id", "tree-3")
    assert shown.exit_code == 0, shown.stderr
    text = stdout_of(shown)
    assert text.splitlines()[0].strip() == "library v1: 3 clusters, 0 items in none"
    rows = table_rows(text)
    assert [row[:3] for row in rows[:3]] == [
        ["0", "14", "face, person, smile"],
        ["1", "11", "car, road, red"],
        ["2", "8", "green, tree, autumn"],
    ]
    assert rows[3][:2] == ["id tree-3", "2"]


def test_tags_suggests_from_the_neighbours(served, sdk):
    printed = run(served, "tags", "library", "--id", "face-1", "--json")
    assert printed.exit_code == 0, printed.stderr
    document = json.loads(stdout_of(printed))
    assert (document["model"], document["version"]) == ("library", 1)
    assert [s["tag"] for s in document["suggestions"]] == ["smile"]
    expected = sdk.suggest_tags("library", item_id="face-1").suggestions[0]
    assert document["suggestions"][0] == {
        "tag": "smile",
        "score": expected.score,
        "from_neighbours": expected.from_neighbours,
        "from_cooccurrence": expected.from_cooccurrence,
    }

    shown = run(served, "tags", "library", "--id", "face-1")
    assert table_rows(stdout_of(shown)) == [
        [
            "smile",
            output.cell(expected.score),
            output.cell(expected.from_neighbours),
            output.cell(expected.from_cooccurrence),
        ]
    ]
    nothing_left = run(served, "tags", "library", "--id", "car-1", "--has", HALF_TAG["car"])
    assert nothing_left.exit_code == 0, nothing_left.stderr
    assert table_rows(stdout_of(nothing_left)) == []
    assert "no tag to suggest" in nothing_left.stderr


# -- images and texts through a real embedder ---------------------------------------------------

DOG_ITEMS = 6


@dataclass
class Pictures:
    detector: ServiceHandle
    files: list[Path]
    ids: list[str]
    tags: list[list[str]]

    @property
    def target(self) -> str:
        return self.detector.server.target


@pytest.fixture(scope="module")
def pictures(tmp_path_factory, embedder) -> Iterator[Pictures]:
    """Model `pictures`: an index over tiny-ViT vectors of drawings, tagged dog (the first
    six) or car, with MiniLM vectors of the tags for text search."""
    root = tmp_path_factory.mktemp("similarity-pictures")
    detector = None
    try:
        info = {m.name: m for m in embedder.stub.GetInfo(embedder_pb2.GetInfoRequest()).models}
        rng = np.random.default_rng(3)
        files, ids, tags = [], [], []
        for i, age in enumerate((3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 4.5, 9.5)):
            path = root / f"drawing-{i}.png"
            path.write_bytes(drawings.drawing(age, rng))
            files.append(path)
            ids.append(f"drawing-{i}")
            tags.append(["dog"] if i < DOG_ITEMS else ["car"])

        def source(name: str) -> manifest_pb2.EmbeddingSource:
            served = info[name]
            return manifest_pb2.EmbeddingSource(
                model=name,
                model_id=served.model_id,
                revision=served.revision,
                dimension=served.dimension,
                modality=served.modality,
            )

        repository = root / "models"
        repository.mkdir()
        with EmbedderClient(embedder.server.target) as client:
            vectors = client.embed(images=files, model="vit")
            publish_indexed(
                repository,
                "pictures",
                vectors,
                ids=ids,
                tags=tags,
                embedding=source("vit"),
                text_model=source("text"),
                text_embedder=lambda texts: client.embed(texts=texts, model="text"),
            )
        detector = start_detector(repository, embedder=embedder.server.target)
        yield Pictures(detector, files, ids, tags)
    finally:
        if detector is not None:
            detector.close()


@pytest.mark.slow
def test_an_image_finds_itself_first(pictures):
    result = run(pictures, "similar", "pictures", "--image", pictures.files[4], "-k", 3, "--json")
    assert result.exit_code == 0, result.stderr
    items = json.loads(stdout_of(result))["items"]
    assert items[0]["id"] == "drawing-4"
    assert items[0]["similarity"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_a_text_finds_the_items_of_the_tag_it_matches(pictures):
    result = run(pictures, "similar", "pictures", "--text", "puppy", "-k", DOG_ITEMS, "--json")
    assert result.exit_code == 0, result.stderr
    printed = json.loads(stdout_of(result))
    assert {item["id"] for item in printed["items"]} == set(pictures.ids[:DOG_ITEMS])
    assert [m["tag"] for m in printed["matched_tags"]] == ["dog"]

    shown = run(pictures, "similar", "pictures", "--text", "puppy", "-k", 2)
    assert shown.exit_code == 0, shown.stderr
    similarity = printed["matched_tags"][0]["similarity"]
    assert stdout_of(shown).splitlines()[-1] == f"matched tags: dog ({similarity:.3f})"


@pytest.mark.slow
def test_images_are_assigned_and_tagged_as_the_sdk_answers(pictures):
    image = pictures.files[7]
    with DetectorClient(pictures.target) as sdk:
        clusters = sdk.clusters("pictures", representatives=1, assign=[Query.by_image(image)])
        suggestions = sdk.suggest_tags("pictures", image=image, top_k=2)
    assigned = run(pictures, "clusters", "pictures", "-r", 1, "--assign-image", image, "--json")
    assert assigned.exit_code == 0, assigned.stderr
    assert json.loads(stdout_of(assigned))["assignments"] == [
        {
            "cluster": clusters.assignments[0].cluster,
            "is_new": clusters.assignments[0].is_new,
            "similarity": clusters.assignments[0].similarity,
            "item": str(image),
        }
    ]
    tagged = run(pictures, "tags", "pictures", "--image", image, "-k", 2, "--json")
    assert tagged.exit_code == 0, tagged.stderr
    assert json.loads(stdout_of(tagged)) == suggestions.to_dict()
