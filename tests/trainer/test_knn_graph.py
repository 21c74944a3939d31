"""The kNN graph, as served: one ranking product, the candidates found group by group on large
references, their distances computed exactly. It scores and explains as the learner does on
references of every size, with the rows it was fitted on (distance 0) and their copies among
the scored rows."""

import numpy as np
import onnx
import pytest
from onnx import shape_inference

from oddity.common import bundle
from oddity.trainer.graph_memory import scratch_bytes_per_row
from oddity.trainer.learners import make_anomaly_learner
from oddity.trainer.learners.knn import GROUP_ROWS, GROUPED_MIN_REFERENCE, ranking_matrix
from oddity.trainer.validation import onnx_session
from tests.support.models import normal_rows


def _rows(n: int, d: int, seed: int) -> np.ndarray:
    rows = normal_rows(n, d, seed=seed, shift=3.0)
    rows[: n // 5] = rows[n // 5 : 2 * (n // 5)]  # duplicates: ties the exact pass must measure as 0
    return rows


def _outputs(learner, rows: np.ndarray) -> list[np.ndarray]:
    session = onnx_session(learner.to_onnx())
    return session.run([bundle.SCORE_OUTPUT, bundle.FEATURE_ERRORS_OUTPUT], {bundle.INPUT_NAME: rows})


@pytest.mark.parametrize(
    ("metric", "n", "d"),
    [
        ("euclidean", 700, 9),  # one TopK over the reference
        ("euclidean", GROUPED_MIN_REFERENCE + 13, 6),  # grouped, padded to whole groups
        ("cosine", GROUPED_MIN_REFERENCE + 40, 20),
        ("whitened", GROUPED_MIN_REFERENCE + 1, 5),
    ],
)
def test_the_graph_scores_and_explains_as_the_learner(metric, n, d):
    train = _rows(n, d, seed=0)
    learner = make_anomaly_learner("knn", {"metric": metric}).fit(train)
    assert (len(learner.reference_) >= GROUPED_MIN_REFERENCE) == (n > GROUPED_MIN_REFERENCE)
    rows = np.vstack([train[:300], normal_rows(300, d, seed=1, shift=3.0), train[:50] + 0.5]).astype(np.float32)
    scores, errors = _outputs(learner, rows)
    framework_scores, framework_errors = learner.anomaly_scores(rows)
    np.testing.assert_allclose(scores, framework_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(errors, framework_errors, rtol=1e-3, atol=1e-5)


def test_a_grouped_reference_is_padded_with_columns_no_row_ranks_near():
    reference = normal_rows(GROUPED_MIN_REFERENCE + 5, 4, seed=2)
    ranking, groups = ranking_matrix(reference, 13)
    assert groups == GROUP_ROWS
    assert ranking.shape == (5, -(-len(reference) // GROUP_ROWS) * GROUP_ROWS)
    np.testing.assert_allclose(ranking[:4, : len(reference)], -2 * reference.T, rtol=1e-6)
    assert (ranking[:4, len(reference) :] == 0).all() and (ranking[4, len(reference) :] > 1e29).all()
    assert ranking_matrix(reference[:1000], 13)[1] == 0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_every_tensor_of_the_graph_has_a_known_width_so_its_declared_memory_is_its_own(metric):
    """The detector sizes its runs by the memory per row the trainer declares from the graph's
    inferred shapes; a width inference cannot name counts as the input's. The graph before
    this one spread the nearest slot with a computed shape ([N, ?, ?]): 7.2 MB a row declared
    on 769-d embeddings, so no run of 64 rows fit the detector's 128 MB budget."""
    train = normal_rows(1000, 300, seed=3)
    graph = make_anomaly_learner("knn", {"metric": metric}).fit(train).to_onnx()
    inferred = shape_inference.infer_shapes(onnx.load_from_string(graph), strict_mode=True).graph
    widths = {
        value.name: [
            dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim[1:]
        ]
        for value in [*inferred.value_info, *inferred.output]
    }
    assert {name: dims for name, dims in widths.items() if None in dims} == {}
    # The candidates' neighbours and differences (2 x 13 x 300 floats), the ranks (1,000), rows of 300.
    assert scratch_bytes_per_row(graph, 300) < 50_000
