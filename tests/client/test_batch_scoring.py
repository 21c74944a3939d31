"""In-process scoring of a published version (`BundleScorer`) against a detector process
serving the same versions: on 10,000 rows, the same scores and normalized scores to the last
bit, the same decisions, groups and top features, the same classes and probabilities; the
same for an Arrow table; a tree ensemble's scores the same on one thread or two; bad input
refused with the detector's reasons."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from oddity.client import DetectorClient
from oddity.client.bundle_scoring import BundleScorer
from oddity.common.errors import InvalidArgument, NotFound
from tests.client import batch_models
from tests.support.servers import ServiceProcess

ROWS = 10_000
pytestmark = pytest.mark.slow  # a detector process and trained models for the module


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "models"
    path.mkdir()
    batch_models.publish_all(path)
    return path


@pytest.fixture(scope="module")
def detector(repository: Path) -> Iterator[DetectorClient]:
    process = ServiceProcess("oddity.detector.main", ["--model-repository", str(repository)]).start()
    try:
        process.wait_ready("oddity.v1.Detector")
        with DetectorClient(process.target) as client:
            yield client
    finally:
        process.terminate()


@pytest.mark.parametrize("model", ["knn", "forest"])
def test_anomaly_answers_equal_the_detectors_to_the_last_bit(repository, detector, model):
    frame = batch_models.table(ROWS)
    scorer = BundleScorer.load(repository, model)
    top_k = 3 if scorer.explains else 0
    served = detector.detect(model, frame, explain_top_k=top_k).to_frame()
    local = scorer.score(frame, explain_top_k=top_k)

    assert list(local.columns) == list(served.columns)
    assert np.max(np.abs(local["normalized_score"].to_numpy() - served["normalized_score"].to_numpy())) == 0.0
    assert np.max(np.abs(local["score"].to_numpy() - served["score"].to_numpy())) == 0.0
    assert np.array_equal(local["is_anomaly"].to_numpy(), served["is_anomaly"].to_numpy())
    pd.testing.assert_frame_equal(local, served, check_exact=True)
    # Rows that should stand out do, and a routed model used every group (70+ goes to `all`).
    assert local["is_anomaly"].iloc[::11].mean() > 0.5
    if model == "knn":
        assert set(local["group"]) == {"young", "old", "all"}
        assert local.loc[frame["age"] > 70, "fallback"].all()


def test_threads_do_not_change_a_tree_ensembles_scores(repository, detector):
    # One large request is split over the detector's bulk threads; 100-row requests are scored
    # on one thread. ONNX Runtime's tree ensemble with two intra-op threads summed its trees in
    # another order (scores 1.8e-7 apart); sessions now keep one and split the rows instead.
    frame = batch_models.table(ROWS)
    whole = detector.detect("forest", frame).to_frame()
    parts = pd.concat([detector.detect("forest", frame.iloc[i : i + 100]).to_frame() for i in range(0, ROWS, 100)])
    assert np.max(np.abs(whole["score"].to_numpy() - parts["score"].to_numpy())) == 0.0


def test_classifier_answers_equal_the_detectors(repository, detector):
    frame = batch_models.table(ROWS)
    served = detector.detect("classes", frame).to_frame()
    local = BundleScorer.load(repository, "classes").score(frame)
    pd.testing.assert_frame_equal(local, served, check_exact=True)
    assert set(local["predicted_class"]) == set(batch_models.CLASSES)


def test_arrow_batches_score_as_their_frames(repository):
    frame = batch_models.table(2_000)
    scorer = BundleScorer.load(repository, "knn", version=1, threads=2)
    from_frame = scorer.score(frame, explain_top_k=2)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pd.testing.assert_frame_equal(scorer.score(table, explain_top_k=2), from_frame, check_exact=True)
    batch = table.to_batches()[0]
    assert batch.num_rows == len(frame)
    pd.testing.assert_frame_equal(scorer.score(batch, explain_top_k=2), from_frame, check_exact=True)


def test_bad_input_is_refused_with_the_reason(repository, tmp_path):
    scorer = BundleScorer.load(repository, "knn")
    frame = batch_models.table(20)
    with pytest.raises(InvalidArgument, match="needs columns that are missing: f3"):
        scorer.score(frame.drop(columns=["f3"]))
    broken = frame.copy()
    broken.loc[4, "f7"] = np.nan
    with pytest.raises(InvalidArgument, match=r"row 4, feature 'f7' is nan \(NaN and Inf are not scored\)"):
        scorer.score(broken)
    with pytest.raises(InvalidArgument, match="threshold_percentile must lie in"):
        scorer.score(frame, threshold_percentile=100.0)
    with pytest.raises(NotFound, match="model 'nothing' has no complete version"):
        BundleScorer.load(repository, "nothing")
    with pytest.raises(NotFound, match="version 9 of model 'knn' is not in"):
        BundleScorer.load(repository, "knn", version=9)
    shutil.copytree(repository / "knn", tmp_path / "knn")
    (tmp_path / "knn" / "1" / "manifest.json").unlink()
    with pytest.raises(NotFound, match=r"version 1 of model 'knn' in .* is not complete: manifest.json missing"):
        BundleScorer.load(tmp_path, "knn", version=1)
