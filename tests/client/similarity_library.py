"""The indexed library the SDK and CLI similarity tests share: three subjects of different
sizes (14 faces, 11 cars, 8 trees) as clustered vectors, each item with an id, a subject, an age
and tags, served by a real detector beside a model without an index."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.conftest import ServiceHandle, start_detector
from tests.support import models
from tests.support.similarity import publish_indexed

SUBJECTS = {"face": 14, "car": 11, "tree": 8}  # distinct sizes: clusters come largest first
SECOND_TAG = {"face": "person", "car": "road", "tree": "green"}  # on every item of the subject
HALF_TAG = {"face": "smile", "car": "red", "tree": "autumn"}  # on its even-numbered items
# A cluster's top tags: most frequent first, ties by name.
TOP_TAGS = {"face": ("face", "person", "smile"), "car": ("car", "road", "red"), "tree": ("green", "tree", "autumn")}
DIMENSION = 16


@dataclass
class Library:
    ids: list[str]
    subjects: list[str]
    ages: list[int]
    tags: list[list[str]]
    vectors: np.ndarray
    centers: dict[str, np.ndarray]

    def of(self, subject: str) -> list[str]:
        return [i for i, s in zip(self.ids, self.subjects, strict=True) if s == subject]

    def where(self, keep) -> set[str]:
        """Ids of the items for which keep(subject, age, tags) holds."""
        return {i for i, s, a, t in zip(self.ids, self.subjects, self.ages, self.tags, strict=True) if keep(s, a, t)}

    def far_vector(self) -> np.ndarray:
        """A vector whose direction from the items' mean is orthogonal to every subject's."""
        mean = self.vectors.mean(axis=0)
        directions = np.stack([c - mean for c in self.centers.values()])
        w = np.random.default_rng(7).normal(size=DIMENSION)
        basis, _ = np.linalg.qr(directions.T)
        w -= basis @ (basis.T @ w)
        return (mean + 10 * w / np.linalg.norm(w)).astype(np.float32)


def library_items(seed: int = 0) -> Library:
    rng = np.random.default_rng(seed)
    centers = {s: 3 * rng.normal(size=DIMENSION) for s in SUBJECTS}
    ids, subjects, ages, tags, vectors = [], [], [], [], []
    for subject, count in SUBJECTS.items():
        for i in range(count):
            ids.append(f"{subject}-{i}")
            subjects.append(subject)
            ages.append(3 + i % 8)
            tags.append([subject, SECOND_TAG[subject], *([HALF_TAG[subject]] if i % 2 == 0 else [])])
            vectors.append(centers[subject] + rng.normal(scale=0.3, size=DIMENSION))
    return Library(ids, subjects, ages, tags, np.asarray(vectors, dtype=np.float32), centers)


def publish_library(repository: Path, name: str = "library") -> Library:
    library = library_items()
    publish_indexed(
        repository,
        name,
        library.vectors,
        ids=library.ids,
        metadata={"subject": library.subjects, "age": library.ages},
        tags=library.tags,
    )
    return library


@dataclass
class ServedLibrary:
    library: Library
    detector: ServiceHandle

    @property
    def target(self) -> str:
        return self.detector.server.target


def serve_library(repository: Path) -> Iterator[ServedLibrary]:
    """A detector serving the library (as "library") and a model without an index ("sensors")."""
    library = publish_library(repository)
    plain = models.fit_pca_group(models.normal_rows(200, 4), components=2)
    models.publish_simple(repository, "sensors", plain, dimension=4)  # no index
    detector = start_detector(repository)
    yield ServedLibrary(library, detector)
    detector.close()
