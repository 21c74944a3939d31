"""The Gaussian kinds (mahalanobis, pca) and kNN's whitened metric and k-th distance: each
learner scores as scikit-learn's own implementation of the same method does, its ONNX graph
reproduces the learner (the largest difference is recorded in the test report), and its
explanations are the parts its score is the sum of."""

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from oddity.common import bundle
from oddity.trainer.learners import make_anomaly_learner
from oddity.trainer.learners.gaussian import whitening
from oddity.trainer.validation import onnx_session

RNG = np.random.default_rng(7)
# Correlated features on different scales, with an offset: what standardization and whitening are for.
MIXING = RNG.normal(size=(8, 8))
TRAIN = RNG.normal(size=(1500, 8)) @ MIXING * np.array([1, 10, 100, 0.1, 1, 1, 5, 2]) + 50
TEST = np.vstack([RNG.normal(size=(300, 8)) @ MIXING * np.array([1, 10, 100, 0.1, 1, 1, 5, 2]) + 50, TRAIN[:20]])
TEST[::7] += RNG.normal(0, 3, size=TEST[::7].shape) * TRAIN.std(axis=0)  # some rows off the cloud


def _standardized(x: np.ndarray) -> np.ndarray:
    return (x - TRAIN.mean(axis=0)) / (TRAIN.std(axis=0) + 1e-6)


def _graph_outputs(learner, rows):
    session = onnx_session(learner.to_onnx())
    return session.run(
        [bundle.SCORE_OUTPUT, bundle.FEATURE_ERRORS_OUTPUT], {bundle.INPUT_NAME: rows.astype(np.float32)}
    )


def _record_parity(record_property, learner, rows) -> float:
    """The largest difference between the graph's scores and the learner's, relative to the
    largest score; recorded as a property of the test."""
    exported, _ = _graph_outputs(learner, rows)
    reference = learner.anomaly_scores(rows)[0]
    gap = float(np.max(np.abs(exported - reference)) / np.max(np.abs(reference)))
    record_property("onnx_max_relative_diff", gap)
    return gap


def test_mahalanobis_is_scikit_learns_ledoit_wolf_distance_and_its_graph_matches(record_property):
    learner = make_anomaly_learner("mahalanobis", {}).fit(TRAIN)
    reference = LedoitWolf(assume_centered=True).fit(_standardized(TRAIN))
    np.testing.assert_allclose(learner.anomaly_scores(TEST)[0], reference.mahalanobis(_standardized(TEST)), rtol=1e-6)
    assert _record_parity(record_property, learner, TEST) < 1e-5


def test_pca_is_the_reconstruction_error_outside_scikit_learns_components(record_property):
    learner = make_anomaly_learner("pca", {"variance": 0.9}).fit(TRAIN)
    reference = PCA(n_components=0.9, svd_solver="full").fit(_standardized(TRAIN))
    assert learner.components_ == reference.n_components_
    z = _standardized(TEST)
    residual = z - reference.inverse_transform(reference.transform(z))
    np.testing.assert_allclose(learner.anomaly_scores(TEST)[0], (residual**2).sum(axis=1), rtol=1e-6, atol=1e-9)
    assert _record_parity(record_property, learner, TEST) < 1e-5


@pytest.mark.parametrize("kind", ["mahalanobis", "pca"])
def test_explanations_are_the_parts_the_score_sums(kind):
    learner = make_anomaly_learner(kind, {}).fit(TRAIN)
    scores, errors = learner.anomaly_scores(TEST)
    np.testing.assert_allclose(errors.sum(axis=1), scores, rtol=1e-5)
    graph_scores, graph_errors = _graph_outputs(learner, TEST)
    np.testing.assert_allclose(graph_errors.sum(axis=1), graph_scores, rtol=1e-4)


def test_mahalanobis_blames_the_feature_a_row_was_pushed_along():
    learner = make_anomaly_learner("mahalanobis", {}).fit(TRAIN)
    for feature in range(TRAIN.shape[1]):
        row = TRAIN.mean(axis=0).copy()
        row[feature] += 8 * TRAIN[:, feature].std()
        assert int(np.argmax(learner.anomaly_scores(row[None, :])[1][0])) == feature


def test_knn_whitened_is_the_nearest_neighbour_distance_after_shrinkage_whitening(record_property):
    learner = make_anomaly_learner("knn", {"metric": "whitened", "k": 5}).fit(TRAIN)
    fitted = whitening(TRAIN, 0)
    distances, _ = NearestNeighbors(n_neighbors=5).fit(fitted.apply(TRAIN)).kneighbors(fitted.apply(TEST[:300]))
    np.testing.assert_allclose(learner.anomaly_scores(TEST[:300])[0], distances.mean(axis=1), rtol=1e-6)
    assert _record_parity(record_property, learner, TEST) < 1e-5


def test_knn_kth_is_the_distance_to_the_kth_nearest(record_property):
    learner = make_anomaly_learner("knn", {"aggregate": "kth", "k": 7}).fit(TRAIN)
    distances, _ = NearestNeighbors(n_neighbors=7).fit(_standardized(TRAIN)).kneighbors(_standardized(TEST[:300]))
    np.testing.assert_allclose(learner.anomaly_scores(TEST[:300])[0], distances[:, -1], rtol=1e-6)
    assert _record_parity(record_property, learner, TEST) < 1e-5


def test_bad_parameters_name_the_allowed_values():
    with pytest.raises(ValueError, match=r"knn: metric must be one of \['euclidean', 'cosine', 'whitened'\]"):
        make_anomaly_learner("knn", {"metric": "manhattan"})
    with pytest.raises(ValueError, match=r"knn: aggregate must be one of \['mean', 'kth'\], got 'median'"):
        make_anomaly_learner("knn", {"aggregate": "median"})
    with pytest.raises(ValueError, match=r"pca: variance must lie in \(0, 1\), got 1.5"):
        make_anomaly_learner("pca", {"variance": 1.5})
