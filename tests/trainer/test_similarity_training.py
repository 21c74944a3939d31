"""The trainer publishes each version with its similarity index: an image library (embedded by
a real embedder) gets an "embedding" index with the ids, metadata, tags, clusters and text
vectors of its items; a table gets a "features" index; rows dropped for bad values are not
indexed; bad id columns and text models fail the job; `enabled: false` publishes no index; a
rollback serves the older index."""

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from oddity.common import bundle
from oddity.common.bundle import index_contract as contract
from oddity.trainer.spec import DatasetSpec
from oddity.v1 import trainer_pb2
from tests.conftest import start_embedder, start_trainer
from tests.support import datasets
from tests.support.servers import wait_models
from tests.trainer.test_robustness import run_job

pytestmark = pytest.mark.slow  # a scenario through real services; `-m "not slow"` leaves it out

VIT_DIMENSION = 32  # tests.support.encoders.tiny_vit's hidden size
TEXT_DIMENSION = 384  # all-MiniLM-L6-v2
MANUAL = {"retrain": {"policy": "manual"}}

# Three recurring subjects, each its own scene; a small shape of some ink on each (tags).
SCENES = {"sunset": (230, 120, 40), "forest": (30, 120, 50), "sea": (30, 80, 190)}
SHAPES = ("circle", "square")
INKS = {"white": (245, 245, 245), "black": (15, 15, 15), "yellow": (240, 220, 40)}


@dataclass(frozen=True)
class Picture:
    id: str
    file: str
    subject: str
    tags: tuple[str, ...]
    image: bytes


def pictures(per_subject: int, seed: int) -> list[Picture]:
    """Shuffled pictures of every subject: the scene's colour varied, a shape placed at random, noise."""
    rng = np.random.default_rng(seed)
    subjects = [s for s in SCENES for _ in range(per_subject)]
    out = []
    for n, k in enumerate(rng.permutation(len(subjects))):
        subject = subjects[k]
        scene = np.array(SCENES[subject]) + rng.integers(-20, 21, 3)
        image = Image.new("RGB", (64, 64), tuple(int(c) for c in scene))
        shape, ink = SHAPES[int(rng.integers(len(SHAPES)))], list(INKS)[int(rng.integers(len(INKS)))]
        size = int(rng.integers(5, 12))
        x, y = (int(v) for v in rng.integers(size, 64 - size, 2))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)([x - size, y - size, x + size, y + size], INKS[ink])
        pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 8, (64, 64, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
        out.append(Picture(f"p{seed}-{n:03d}", f"{n:03d}.png", subject, (subject, shape, ink), buffer.getvalue()))
    return out


def write_library(folder: Path, items: list[Picture]) -> None:
    """images/ and metadata.csv (id, file, subject, tags: comma- or semicolon-separated)."""
    (folder / "images").mkdir(parents=True)
    for item in items:
        (folder / "images" / item.file).write_bytes(item.image)
    rows = [
        {"id": i.id, "file": i.file, "subject": i.subject, "tags": f"{i.tags[0]}, {i.tags[1]}; {i.tags[2]}"}
        for i in items
    ]
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)


@pytest.fixture(scope="module")
def embedder(shared_encoders):
    handle = start_embedder(shared_encoders.cache_dir, shared_encoders.models)
    wait_models(handle, timeout=120)
    yield handle
    handle.close()


@pytest.fixture
def trainer(embedder, data_volume, repository):
    handle = start_trainer(data_volume, repository, embedder=embedder.server.target)
    yield handle
    handle.close()


def catalog_of(version: bundle.VerifiedVersion):
    return contract.read_catalog(version.index[contract.CATALOG_FILE])


def completed(trainer, dataset: str) -> dict:
    """The details of the dataset's last TRAINING_COMPLETED event."""
    events = trainer.stub.History(
        trainer_pb2.HistoryRequest(dataset=dataset, event_types=["TRAINING_COMPLETED"])
    ).events
    return json.loads(events[-1].details_json)


def metadata_values(catalog, name: str) -> list:
    column = next(c for c in catalog.metadata if c.name == name)
    return list(column.numbers) if column.numeric else list(column.text)


def image_spec(**similarity) -> dict:
    spec = {
        "images": {"path": "images", "metadata": "metadata.csv", "file_column": "file"},
        "embedder": {"model": "vit"},
        "model": {"kind": "knn"},
        "min_samples": 20,
        **MANUAL,
    }
    if similarity:
        spec["similarity"] = similarity
    return spec


def shelf(samples: range, seed: int = 0) -> pd.DataFrame:
    """Table rows: a numeric id, a site, tags and four sensors."""
    frame = datasets.sensor_frame(len(samples), d=4, seed=seed)
    frame.insert(0, "sample", list(samples))
    frame.insert(1, "site", ["north" if i % 2 else "south" for i in range(len(samples))])
    frame.insert(2, "labels", ["steel; coated" if i % 3 else "steel, bare" for i in range(len(samples))])
    return frame


def table_spec(**similarity) -> dict:
    return {
        "sources": [{"path": "rows.csv"}],
        "model": {"kind": "knn"},
        "min_samples": 20,
        "similarity": {"id_column": "sample", "tags_column": "labels", **similarity},
        **MANUAL,
    }


def test_an_image_library_is_published_with_its_index(trainer, data_volume, repository):
    folder = data_volume / "datasets" / "library"
    items = pictures(12, seed=0)
    write_library(folder, items)
    (folder / "dataset.yaml").write_text(json.dumps(image_spec(id_column="id", tags_column="tags")))

    job = run_job(trainer, "library")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message

    version = bundle.load_verified_version(repository, "library", 1)  # every index file's sha256 checked
    index = version.manifest.similarity
    assert (index.space, index.items, index.dimension) == ("embedding", 36, VIT_DIMENSION)
    assert set(version.index) == {contract.VECTORS_FILE, contract.CATALOG_FILE, contract.TEXT_VECTORS_FILE}
    assert contract.read_npy(version.index[contract.VECTORS_FILE], what="vectors").shape == (36, VIT_DIMENSION)
    catalog = catalog_of(version)
    assert list(catalog.ids) == [item.id for item in items]
    assert [c.name for c in catalog.metadata] == ["subject"]  # not the id, file or tags columns
    assert metadata_values(catalog, "subject") == [item.subject for item in items]
    names = list(catalog.tag_names)
    assert [{names[t] for t in tags.tags} for tags in catalog.item_tags] == [set(item.tags) for item in items]

    # Each subject recurs as one cluster.
    subjects = np.array([item.subject for item in items])
    clusters = np.array(catalog.item_clusters)
    assert index.clusters == len(catalog.clusters) == 3
    assert sorted(sorted(subjects[clusters == c.id].tolist()) for c in catalog.clusters) == [
        [subject] * 12 for subject in sorted(SCENES)
    ]

    # Text search over the tags through the embedder's text model.
    assert index.text_model.model == "text" and index.text_model.modality == "text"
    text_vectors = contract.read_npy(version.index[contract.TEXT_VECTORS_FILE], what="text vectors")
    assert text_vectors.shape == (len(names), TEXT_DIMENSION)

    details = completed(trainer, "library")
    assert details["index"] == {
        "space": "embedding",
        "items": 36,
        "dimension": VIT_DIMENSION,
        "clusters": 3,
        "unclustered": 0,
        "unclustered_share": 0.0,
        "tags": len(names),
        "search": "exact",
        "text_model": "text",
    }
    assert "index" in details["phase_seconds"]


def test_a_table_gets_a_features_index_without_its_dropped_rows(trainer, data_volume, repository):
    rows = shelf(range(1001, 1041))
    rows.loc[6, "sensor_2"] = np.nan  # sample 1007: dropped from the training rows and the index
    datasets.write_dataset(data_volume, "shelf", table_spec(approximate_from=30), {"rows.csv": rows})

    job = run_job(trainer, "shelf")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message

    version = bundle.load_verified_version(repository, "shelf", 1)
    assert list(version.manifest.feature_names) == ["sensor_0", "sensor_1", "sensor_2", "sensor_3"]  # not the id
    index = version.manifest.similarity
    assert (index.space, index.items, index.dimension) == ("features", 39, 4)
    assert index.approximate.file == contract.APPROXIMATE_FILE and contract.APPROXIMATE_FILE in version.index
    catalog = catalog_of(version)
    kept = [s for s in range(1001, 1041) if s != 1007]
    assert list(catalog.ids) == [str(s) for s in kept]
    assert [c.name for c in catalog.metadata] == ["site"]
    assert metadata_values(catalog, "site") == ["north" if (s - 1001) % 2 else "south" for s in kept]
    assert sorted(catalog.tag_names) == ["bare", "coated", "steel"]
    assert index.text_model.model == "text"
    assert completed(trainer, "shelf")["index"]["search"] == "approximate"


def test_bad_id_columns_and_text_models_fail_the_job_with_the_reason(trainer, data_volume, repository):
    datasets.write_dataset(
        data_volume, "unnamed", table_spec(id_column="serial"), {"rows.csv": shelf(range(1001, 1031))}
    )
    twice = shelf(range(1001, 1031))
    twice.loc[[3, 8], "sample"] = 1002
    datasets.write_dataset(data_volume, "twice", table_spec(), {"rows.csv": twice})
    datasets.write_dataset(data_volume, "pictures", table_spec(text_model="vit"), {"rows.csv": shelf(range(1, 31))})

    unnamed = run_job(trainer, "unnamed")
    assert unnamed.state == trainer_pb2.JOB_STATE_FAILED
    assert unnamed.message == (
        "similarity.id_column 'serial' is not a column of the data; its columns are "
        "['site', 'labels', 'sample', 'sensor_0', 'sensor_1', 'sensor_2', 'sensor_3']"
    )
    repeated = run_job(trainer, "twice")
    assert repeated.state == trainer_pb2.JOB_STATE_FAILED
    assert repeated.message == "similarity index: item ids (column 'sample') must be unique; repeated: '1002' (3 times)"
    pictures = run_job(trainer, "pictures")
    assert pictures.state == trainer_pb2.JOB_STATE_FAILED
    assert pictures.message == "similarity.text_model 'vit' embeds images, not texts"
    assert [p.name for p in repository.iterdir()] == []


def test_images_in_subfolders_are_named_by_their_path(trainer, data_volume, repository):
    folder = data_volume / "datasets" / "aged"
    for item in pictures(8, seed=2):  # images/<age>/<file>: one age per subject
        age = folder / "images" / str(3 + list(SCENES).index(item.subject))
        age.mkdir(parents=True, exist_ok=True)
        (age / item.file).write_bytes(item.image)
    spec = {**image_spec(), "images": {"path": "images", "folder_column": "age"}}
    (folder / "dataset.yaml").write_text(json.dumps(spec))

    job = run_job(trainer, "aged")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    catalog = catalog_of(bundle.load_verified_version(repository, "aged", 1))
    expected = sorted(str(p.relative_to(folder / "images")) for p in (folder / "images").rglob("*.png"))
    assert list(catalog.ids) == expected  # e.g. "3/005.png"
    assert metadata_values(catalog, "age") == [float(name.split("/")[0]) for name in expected]
    assert not catalog.item_tags and not catalog.captions


def test_a_file_listed_twice_is_two_items_told_apart_by_default(trainer, data_volume, repository):
    folder = data_volume / "datasets" / "relisted"
    items = pictures(8, seed=3)
    write_library(folder, items)
    table = pd.read_csv(folder / "metadata.csv")
    table = pd.concat([table, table.iloc[[0]].assign(subject="again")], ignore_index=True)
    table.drop(columns=["id"]).to_csv(folder / "metadata.csv", index=False)
    (folder / "dataset.yaml").write_text(json.dumps(image_spec(tags_column="tags")))

    job = run_job(trainer, "relisted")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    catalog = catalog_of(bundle.load_verified_version(repository, "relisted", 1))
    assert list(catalog.ids) == [i.file for i in items] + [f"{items[0].file}#2"]
    assert metadata_values(catalog, "subject")[-1] == "again"


def test_an_index_can_be_turned_off(trainer, data_volume, repository):
    folder = data_volume / "datasets" / "plain"
    write_library(folder, pictures(8, seed=1))
    (folder / "dataset.yaml").write_text(json.dumps(image_spec(enabled=False)))

    job = run_job(trainer, "plain")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    version = bundle.load_verified_version(repository, "plain", 1)
    assert not version.manifest.HasField("similarity") and not version.index
    assert sorted(p.name for p in (repository / "plain" / "1").iterdir()) == ["all.onnx", "manifest.json"]
    assert "index" not in completed(trainer, "plain")


def test_a_rollback_serves_the_older_index(trainer, data_volume, repository):
    folder = datasets.write_dataset(data_volume, "rolled", table_spec(), {"rows.csv": shelf(range(1001, 1031))})
    assert run_job(trainer, "rolled").published_version == 1
    shelf(range(2001, 2041), seed=5).to_csv(folder / "rows.csv", index=False)
    assert run_job(trainer, "rolled").published_version == 2

    rolled = trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="rolled"))
    assert (rolled.version, rolled.restored_from) == (3, 1)
    first, restored = (bundle.load_verified_version(repository, "rolled", v) for v in (1, 3))
    assert restored.manifest.similarity == first.manifest.similarity
    assert restored.index == first.index
    assert list(catalog_of(restored).ids) == [str(s) for s in range(1001, 1031)]


def test_without_a_text_model_the_index_has_no_text_search_and_the_history_says_why(data_volume, repository):
    # Nothing listens on port 1: the embedder is not there.
    trainer = start_trainer(data_volume, repository, embedder="127.0.0.1:1", embedder_connect_timeout_seconds=1)
    try:
        datasets.write_dataset(data_volume, "untold", table_spec(), {"rows.csv": shelf(range(1001, 1031))})
        job = run_job(trainer, "untold")
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
        version = bundle.load_verified_version(repository, "untold", 1)
        index = version.manifest.similarity
        assert index.tags == 3 and not index.text_model.model and contract.TEXT_VECTORS_FILE not in version.index
        figures = completed(trainer, "untold")["index"]
        assert figures["text_model"] == ""
        assert figures["text_search"].startswith("no text search: embedder at 127.0.0.1:1: DEADLINE_EXCEEDED")
    finally:
        trainer.close()


@pytest.mark.parametrize(
    ("spec", "indexed"),
    [
        ({"images": {"path": "images"}}, True),
        ({"texts": {"path": "notes.csv"}}, True),
        ({"sources": [{"path": "rows.csv"}]}, False),
        ({"sources": [{"path": "rows.csv"}], "similarity": {}}, True),
        ({"images": {"path": "images"}, "similarity": {"enabled": False}}, False),
    ],
)
def test_images_and_texts_are_indexed_by_default_tables_when_asked(spec, indexed):
    assert DatasetSpec.model_validate(spec).indexed is indexed


@pytest.mark.parametrize(
    ("similarity", "problem"),
    [
        ({"id_column": "name", "tags_column": "name"}, "id_column, tags_column and caption_column must be different"),
        ({"tag_column": "tags"}, "Extra inputs are not permitted"),
        ({"min_cooccurrence": 0}, "greater than or equal to 1"),
    ],
)
def test_a_bad_similarity_section_is_a_spec_error(similarity, problem):
    with pytest.raises(ValueError, match=problem):
        DatasetSpec.model_validate({"images": {"path": "images"}, "similarity": similarity})
