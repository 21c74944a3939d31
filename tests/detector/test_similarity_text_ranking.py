"""Text queries over an image index: items that tie on a matched tag come most typical first."""

from __future__ import annotations

import numpy as np

from oddity.detector.item_index import ItemIndex
from oddity.trainer.index_builder import IndexItems, build_index
from oddity.v1 import manifest_pb2

TAG_VECTORS = {"car": [1.0, 0.0], "face": [0.0, 1.0]}


def test_items_tied_on_a_tag_come_closest_to_the_matches_centre_first():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    spread = np.array([3.0, 0.2, 1.5, 0.5, 2.5, 1.0])  # distance of each car from the cars' centre
    cars = centre + spread[:, None] * rng.normal(size=(6, 16)) / 4
    faces = rng.normal(size=(6, 16)) * 3
    built = build_index(
        IndexItems(
            ids=[f"car-{i}" for i in range(6)] + [f"face-{i}" for i in range(6)],
            vectors=np.vstack([cars, faces]).astype(np.float32),
            tags=[["car"]] * 6 + [["face"]] * 6,
        ),
        space="embedding",
        text_embedder=lambda texts: np.array([TAG_VECTORS[t] for t in texts], dtype=np.float32),
        text_model=manifest_pb2.EmbeddingSource(model="minilm", modality="text", dimension=2),
    )
    index = ItemIndex.load(built.index, built.files)

    ranked, matched = index.text_search(np.array([1.0, 0.0], dtype=np.float32), 4)

    assert [m.tag for m in matched] == ["car"]
    assert np.allclose(ranked.similarities, 1.0)
    vectors = np.stack([index.vector(p) for p in range(6)])
    mean = vectors.mean(axis=0)
    typical = np.argsort(-(vectors @ (mean / np.linalg.norm(mean))))[:4]
    assert ranked.positions.tolist() == typical.tolist()
    assert ranked.positions.tolist() != [0, 1, 2, 3]  # not merely the catalog order
