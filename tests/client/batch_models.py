"""Published versions of real trained kinds for the batch-scoring tests: `knn` routed by
`age` (groups `young`, `old` and `all`; explains its scores), `forest` (an isolation forest:
ONNX Runtime's tree ensemble) and `classes` (a random-forest classifier), and a table of
their columns with unusual rows. Learners from the trainer, fitted in this process (a few
seconds in all); threshold and quantile table from held-out rows as the contract asks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from oddity.common import bundle
from oddity.trainer import bundle_writer
from oddity.trainer.learners import make_learner
from oddity.v1 import manifest_pb2
from tests.support import models

FEATURES = [f"f{i}" for i in range(12)]
CLASSES = ["high", "low"]


def _fitted(kind: str, params: dict, rows: np.ndarray) -> models.FittedGroup:
    cut = int(len(rows) * 0.8)
    graph = make_learner(kind, params).fit(rows[:cut]).to_onnx()
    heldout = models.score_with_onnx(graph, rows[cut:]).astype(np.float64)
    return models.FittedGroup(
        onnx=graph,
        threshold=float(np.percentile(heldout, 95.0)),
        quantiles=np.quantile(heldout, models.QUANTILE_LEVELS),
        heldout_scores=heldout,
        train_samples=cut,
        validation_samples=len(rows) - cut,
    )


def publish_all(repository: Path) -> None:
    d = len(FEATURES)
    young = _fitted("knn", {}, models.normal_rows(1500, d, seed=1))
    old = _fitted("knn", {}, models.normal_rows(1500, d, seed=2, shift=2.0))
    everyone = _fitted("knn", {}, models.normal_rows(1500, d, seed=3, shift=1.0))
    models.publish(
        repository,
        "knn",
        {
            "all": (models.group_proto("all", everyone), everyone.onnx),
            "young": (models.group_proto("young", young, upper=40.0), young.onnx),
            "old": (models.group_proto("old", old, lower=40.0, upper_inclusive=True, upper=70.0), old.onnx),
        },
        dimension=d,
        routing_key="age",
        feature_names=FEATURES,
        kind="knn",
    )
    forest = _fitted("isolation_forest", {}, models.normal_rows(2000, d, seed=4))
    models.publish(
        repository,
        "forest",
        {"all": (models.group_proto("all", forest), forest.onnx)},
        dimension=d,
        feature_names=FEATURES,
        kind="isolation_forest",
    )
    rows = models.normal_rows(2000, d, seed=5)
    labels = np.where(rows[:, 0] + rows[:, 1] > 0, CLASSES[0], CLASSES[1])
    classifier = make_learner("random_forest", {}).fit(rows, labels)
    manifest = manifest_pb2.ModelManifest(
        name="classes",
        kind="random_forest",
        task=manifest_pb2.MODEL_TASK_CLASSIFICATION,
        input_dimension=d,
        feature_names=FEATURES,
        class_labels=[str(c) for c in classifier.classes_],
        dataset="classes",
    )
    manifest.groups.add(name=bundle.ALL_GROUP, onnx_file="all.onnx", status=manifest_pb2.GROUP_STATUS_ACTIVE)
    bundle_writer.publish_version(repository, manifest, {"all.onnx": classifier.to_onnx()})


def table(n: int, seed: int = 7) -> pd.DataFrame:
    """Rows of the models' features in another order, an id, an age per row (some outside
    every bounded group: the `all` group scores them) and some unusual rows."""
    rng = np.random.default_rng(seed)
    rows = models.normal_rows(n, len(FEATURES), seed=seed, shift=1.0)
    rows[::11] += rng.normal(0, 3, size=rows[::11].shape).astype(np.float32)
    frame = pd.DataFrame(rows.astype(np.float64), columns=FEATURES)
    frame.insert(0, "id", np.arange(n, dtype=np.int64))
    frame["age"] = rng.integers(18, 90, n).astype(np.float64)
    return frame[["id", "age", *reversed(FEATURES)]]
