"""The similarity index builder: what its files hold, the clusters of recurring items, tag
statistics, the approximate index, and the version that carries them."""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from oddity.common import bundle
from oddity.common.bundle import index_contract as contract
from oddity.trainer.index_builder import IndexItems, IndexSettings, build_index, split_tags
from oddity.trainer.publisher import Publisher
from oddity.v1 import manifest_pb2
from tests.support.similarity import publish_indexed


def subjects(per_subject: int = 60, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three subjects: tight groups around random directions, plus a shared offset (which
    centring removes)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 3
    labels = np.repeat(np.arange(3), per_subject)
    vectors = centres[labels] + rng.normal(size=(len(labels), d)) + 20.0
    return vectors.astype(np.float32), labels


def items_of(vectors: np.ndarray, labels: np.ndarray, **extra) -> IndexItems:
    return IndexItems(ids=[f"item-{i}" for i in range(len(vectors))], vectors=vectors, **extra)


def test_split_tags_accepts_commas_and_semicolons_and_drops_repeats():
    assert split_tags(" Red, car;sky ;; red,") == ["red", "car", "sky"]
    assert split_tags(float("nan")) == []
    assert split_tags(None) == []


def test_vectors_are_centred_and_normalized_in_catalog_order():
    vectors, labels = subjects()
    built = build_index(items_of(vectors, labels), space="embedding")
    stored = contract.read_npy(built.files[contract.VECTORS_FILE], what="vectors")
    expected = contract.normalize(vectors, vectors.mean(axis=0), None)
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(built.index.center), vectors.mean(axis=0), rtol=1e-5)
    assert list(built.index.scale) == []
    assert (built.index.items, built.index.dimension) == (180, 32)
    assert not built.index.approximate.file  # 180 items: exact search


def test_feature_space_standardizes_each_column():
    rng = np.random.default_rng(1)
    rows = np.column_stack([rng.normal(0, 1000, 100), rng.normal(0, 0.001, 100), np.full(100, 5.0)])
    built = build_index(items_of(rows.astype(np.float32), np.zeros(100)), space="features")
    scale = np.asarray(built.index.scale)
    assert scale[0] == pytest.approx(rows[:, 0].std(), rel=1e-4)
    assert scale[1] == pytest.approx(rows[:, 1].std(), rel=1e-3)
    assert scale[2] == 1.0  # a constant column is left unscaled, not divided by zero


def test_clusters_recover_the_subjects_with_representatives_and_radius():
    vectors, labels = subjects()
    built = build_index(items_of(vectors, labels), space="embedding")
    catalog = contract.read_catalog(built.files[contract.CATALOG_FILE])
    assert built.index.clusters == 3
    assert adjusted_rand_score(labels, list(catalog.item_clusters)) == 1.0
    assert [c.id for c in catalog.clusters] == [0, 1, 2]
    for cluster in catalog.clusters:
        members = [i for i, c in enumerate(catalog.item_clusters) if c == cluster.id]
        assert cluster.size == len(members) == 60
        assert set(cluster.representatives) <= set(members)
        assert len(cluster.representatives) == 10
        assert np.linalg.norm(cluster.centroid) == pytest.approx(1.0, abs=1e-5)
        assert 0 < cluster.radius < 1


def test_clusters_are_numbered_largest_first():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(2, 16)) * 3
    labels = np.array([0] * 30 + [1] * 90)
    vectors = (centres[labels] + rng.normal(size=(120, 16))).astype(np.float32)
    catalog = contract.read_catalog(
        build_index(items_of(vectors, labels), space="embedding").files[contract.CATALOG_FILE]
    )
    assert [c.size for c in catalog.clusters] == [90, 30]
    assert catalog.item_clusters[0] == 1 and catalog.item_clusters[-1] == 0


def test_past_the_sample_size_items_join_the_nearest_cluster(monkeypatch):
    monkeypatch.setattr("oddity.trainer.index_builder.CLUSTER_SAMPLE", 90)
    vectors, labels = subjects()
    catalog = contract.read_catalog(
        build_index(items_of(vectors, labels), space="embedding").files[contract.CATALOG_FILE]
    )
    clusters = np.asarray(catalog.item_clusters)
    joined = clusters != contract.NO_CLUSTER
    # Items outside the sample join their subject's cluster, unless beyond its radius (a tail item).
    assert adjusted_rand_score(labels[joined], clusters[joined]) == 1.0
    assert joined.sum() >= 0.97 * 180
    assert sum(c.size for c in catalog.clusters) == joined.sum()


def test_too_few_items_have_no_clusters():
    vectors, labels = subjects(per_subject=2)
    built = build_index(items_of(vectors, labels), space="embedding")
    catalog = contract.read_catalog(built.files[contract.CATALOG_FILE])
    assert built.index.clusters == 0
    assert list(catalog.item_clusters) == [contract.NO_CLUSTER] * 6


def test_tag_counts_and_trusted_pairs_with_lift_and_pmi():
    vectors, labels = subjects(per_subject=20)
    names = ["face", "house", "car"]
    tags = [
        [names[s]] + (["smile"] if s == 0 and i % 2 == 0 else []) + (["red"] if i % 3 == 0 else [])
        for i, s in enumerate(labels)
    ]
    built = build_index(
        items_of(vectors, labels, tags=tags), space="embedding", settings=IndexSettings(min_cooccurrence=5)
    )
    catalog = contract.read_catalog(built.files[contract.CATALOG_FILE])
    counts = dict(zip(catalog.tag_names, catalog.tag_counts, strict=True))
    assert counts == {"face": 20, "house": 20, "car": 20, "red": 20, "smile": 10}
    assert list(catalog.tag_names[:4]) == ["car", "face", "house", "red"]  # by count, then name
    assert [catalog.tag_names[t] for t in catalog.item_tags[0].tags] == ["face", "red", "smile"]
    pairs = {(catalog.tag_names[p.a], catalog.tag_names[p.b]): p for p in catalog.tag_pairs}
    smile = pairs[("face", "smile")]
    assert smile.count == 10
    assert smile.lift == pytest.approx(10 * 60 / (20 * 10))
    assert smile.pmi == pytest.approx(math.log(3.0))
    assert ("car", "face") not in pairs  # never together
    assert all(p.count >= 5 for p in catalog.tag_pairs)
    face_cluster = catalog.clusters[catalog.item_clusters[0]]
    assert face_cluster.top_tags[0] == "face"


def test_metadata_columns_keep_numbers_and_text():
    vectors, labels = subjects(per_subject=4)
    metadata = {"age": [3, 4.5, None, *range(9)], "subject": ["a", 1, *["b"] * 10]}
    catalog = contract.read_catalog(
        build_index(items_of(vectors, labels, metadata=metadata), space="embedding").files[contract.CATALOG_FILE]
    )
    age, subject = catalog.metadata
    assert age.numeric and age.numbers[:2] == [3.0, 4.5] and math.isnan(age.numbers[2])
    assert not subject.numeric and list(subject.text[:3]) == ["a", "1", "b"]


def test_approximate_index_past_the_threshold_finds_the_exact_neighbours():
    vectors, labels = subjects(per_subject=200, d=48)
    built = build_index(items_of(vectors, labels), space="embedding", settings=IndexSettings(approximate_from=100))
    assert built.index.approximate.file == contract.APPROXIMATE_FILE
    assert (built.index.hnsw.m, built.index.hnsw.ef_construction, built.index.hnsw.ef_search) == (16, 128, 64)
    hnsw = faiss.deserialize_index(np.frombuffer(built.files[contract.APPROXIMATE_FILE], dtype=np.uint8))
    stored = contract.read_npy(built.files[contract.VECTORS_FILE], what="vectors")
    assert hnsw.ntotal == 600
    _, found = hnsw.search(stored[:50], 10)
    exact = np.argsort(-(stored[:50] @ stored.T), axis=1)[:, :10]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.95


def test_text_vectors_cover_tags_then_captions():
    vectors, labels = subjects(per_subject=4)
    seen: list[list[str]] = []

    def embed(texts: list[str]) -> np.ndarray:
        seen.append(texts)
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)

    model = manifest_pb2.EmbeddingSource(model="minilm", modality="text", dimension=3)
    captions = ["a red car"] * 11 + [""]
    built = build_index(
        items_of(vectors, labels, tags=[["car"]] * 12, captions=captions),
        space="embedding",
        text_embedder=embed,
        text_model=model,
    )
    text = contract.read_npy(built.files[contract.TEXT_VECTORS_FILE], what="text vectors")
    assert seen == [["car", *["a red car"] * 11]]  # the empty caption is not embedded
    assert text.shape == (13, 3)
    assert np.allclose(np.linalg.norm(text[:12], axis=1), 1.0)
    assert not text[12].any()  # a missing caption matches nothing
    assert built.index.text_model.model == "minilm"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (IndexItems(ids=["a", "a"], vectors=np.ones((2, 3))), "item ids must be unique; repeated: 'a'"),
        (IndexItems(ids=["a"], vectors=np.ones((2, 3))), "1 ids for 2 vectors"),
        (IndexItems(ids=["a", "b"], vectors=np.array([[1.0, np.nan], [0, 1]])), "must be finite"),
        (IndexItems(ids=["a", "b"], vectors=np.ones((2, 3)), tags=[["x"]]), "1 tags for 2 items"),
    ],
)
def test_items_that_cannot_be_indexed_are_refused(items, message):
    with pytest.raises(ValueError, match=message):
        build_index(items, space="embedding")


def test_the_version_verifies_its_index_files_and_a_rollback_copies_them(tmp_path):
    vectors, _ = subjects(per_subject=20)
    publish_indexed(tmp_path, "library", vectors, tags=[["x"]] * 60)
    publish_indexed(tmp_path, "library", vectors[:30], tags=[["y"]] * 30)
    first = bundle.load_verified_version(tmp_path, "library", 1)
    assert set(first.index) == {contract.VECTORS_FILE, contract.CATALOG_FILE}
    assert first.manifest.similarity.items == 60

    new, restored = Publisher(tmp_path).rollback("library", 0, keep=5)
    assert (new, restored) == (3, 1)
    rolled = bundle.load_verified_version(tmp_path, "library", 3)
    assert rolled.manifest.similarity.items == 60
    assert rolled.index == first.index

    (tmp_path / "library" / "3" / contract.CATALOG_FILE).write_bytes(b"garbled")
    with pytest.raises(bundle.BundleError, match=r"similarity index: sha256 of index_catalog.pb is .* \(incomplete"):
        bundle.load_verified_version(tmp_path, "library", 3)
    (tmp_path / "library" / "3" / contract.CATALOG_FILE).unlink()
    with pytest.raises(bundle.BundleError, match=r"similarity index: index_catalog\.pb missing"):
        bundle.load_verified_version(tmp_path, "library", 3)


def test_a_manifest_naming_a_path_as_an_index_file_is_refused(tmp_path):
    vectors, _ = subjects(per_subject=10)
    publish_indexed(tmp_path, "library", vectors)
    manifest = bundle.read_manifest(tmp_path / "library" / "1")
    manifest.similarity.catalog.file = "../other/index_catalog.pb"
    with pytest.raises(bundle.BundleError, match="must be a plain file name"):
        bundle.validate_manifest(manifest, name="library", version=1)
