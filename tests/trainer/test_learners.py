"""Every model kind trains, exports an ONNX graph that keeps the bundle contract, and
matches its framework model; the same data and parameters give the same model. The kinds
are the bundle contract's table: one learner per kind, no learner without a kind."""

import numpy as np
import pytest

from oddity.common import bundle
from oddity.trainer.learners import BUILT_IN, learner_class, make_learner
from oddity.trainer.learners.tree_graphs import thresholds_for_float32
from oddity.trainer.validation import onnx_probabilities, onnx_scores, onnx_session
from tests.support.models import normal_rows

ROWS = normal_rows(800, 6, seed=0)
LABELS = np.where(ROWS[:, 0] + ROWS[:, 1] > 0, "up", "down")


def test_every_kind_has_a_learner_and_every_learner_a_kind():
    assert sorted(cls.kind for cls in BUILT_IN) == sorted(bundle.KINDS)
    assert all(learner_class(cls.kind) is cls for cls in BUILT_IN)


@pytest.mark.parametrize("cls", BUILT_IN, ids=lambda cls: cls.kind)
def test_each_learner_declares_what_the_contract_table_says_of_its_kind(cls):
    """The learner classes declare their kinds; the contract's table of built-in kinds (which
    the detector reads) says the same of each."""
    contract = bundle.KINDS[cls.kind]
    assert (cls.task, cls.explains, cls.score_head) == (contract.task, contract.feature_errors, contract.score_head)


@pytest.mark.parametrize("kind", sorted(bundle.KINDS))
def test_each_kind_exports_a_graph_that_matches_the_framework(kind):
    params = {"epochs": 5} if kind in ("autoencoder", "mlp_classifier") else {}
    learner = make_learner(kind, params)
    assert learner.is_classifier == (kind in bundle.CLASSIFIER_KINDS)
    learner.fit(ROWS, LABELS if learner.is_classifier else None)
    session = onnx_session(learner.to_onnx())
    assert [i.name for i in session.get_inputs()] == [bundle.INPUT_NAME]
    outputs = {o.name for o in session.get_outputs()}
    # The graph explains scores per feature exactly when the kinds table says so.
    assert (bundle.FEATURE_ERRORS_OUTPUT in outputs) == bundle.KINDS[kind].feature_errors
    if learner.is_classifier:
        assert {bundle.LABEL_OUTPUT, bundle.PROBABILITIES_OUTPUT} <= outputs
        np.testing.assert_allclose(onnx_probabilities(session, ROWS), learner.predict_proba(ROWS), atol=1e-5)
        assert list(learner.classes_) == ["down", "up"]
    else:
        assert bundle.SCORE_OUTPUT in outputs
        scores = onnx_scores(session, ROWS)
        assert scores.shape == (len(ROWS),)
        np.testing.assert_allclose(scores, learner.anomaly_scores(ROWS)[0], rtol=1e-4, atol=1e-5)
        if bundle.FEATURE_ERRORS_OUTPUT in outputs:
            errors = session.run([bundle.FEATURE_ERRORS_OUTPUT], {bundle.INPUT_NAME: ROWS[:50]})[0]
            np.testing.assert_allclose(errors, learner.anomaly_scores(ROWS[:50])[1], rtol=1e-3, atol=1e-5)
        shifted = onnx_scores(session, ROWS + 5 * ROWS.std(axis=0))
        assert np.median(shifted) > np.percentile(scores, 95)  # higher = more anomalous, for every kind


def test_autoencoder_is_deterministic_and_explains():
    first = make_learner("autoencoder", {"epochs": 8, "seed": 3}).fit(ROWS)
    second = make_learner("autoencoder", {"epochs": 8, "seed": 3}).fit(ROWS)
    assert first.to_onnx() == second.to_onnx()
    session = onnx_session(first.to_onnx())
    errors = session.run([bundle.FEATURE_ERRORS_OUTPUT], {bundle.INPUT_NAME: ROWS[:10]})[0]
    assert errors.shape == (10, 6)
    np.testing.assert_allclose(errors.mean(axis=1), onnx_scores(session, ROWS[:10]), rtol=1e-5)
    assert first.epochs_run_ <= 8 and len(first.history_) == first.epochs_run_


def test_unknown_parameters_are_refused():
    with pytest.raises(ValueError, match=r"unknown autoencoder parameters \['depth'\]"):
        make_learner("autoencoder", {"depth": 3})
    with pytest.raises(ValueError, match="unknown model kind 'magic'"):
        make_learner("magic", {})


def test_trees_match_their_graph_on_rounded_and_tied_columns():
    """Trees split on raw values: columns rounded to a few decimals or full of ties (frames per
    second, counts), fitted in float64 as a CSV reads them, give the same probabilities in ONNX
    Runtime (float32 input) as in scikit-learn."""
    rng = np.random.default_rng(4)
    n = 800
    rows = np.column_stack(
        [
            rng.uniform(-100, -40, n).round(4),
            rng.exponential(0.8, n).round(4),
            rng.exponential(20, n).round(4),
            rng.choice([24, 25, 30, 50, 60], size=n),
            rng.integers(0, 4, size=n),
        ]
    ).astype(np.float64)
    risk = 1.2 * rows[:, 1] + rows[:, 2] / 25 + (rows[:, 0] < -85) * 0.8 + (rows[:, 3] < 30) + rng.normal(0, 0.3, n)
    labels = np.where(risk > 2.2, "deny", "approve")
    learner = make_learner("random_forest", {"n_estimators": 100, "class_weight": "balanced"}).fit(rows, labels)
    session = onnx_session(learner.to_onnx())
    expected = learner.predict_proba(rows)
    np.testing.assert_allclose(onnx_probabilities(session, rows.astype(np.float32)), expected, atol=1e-6)


def test_isolation_forest_graph_scores_as_scikit_learn_on_rounded_and_tied_columns():
    """The isolation forest's graph is built from its trees (one tree-ensemble node): on rounded
    and tied columns, with each tree on its own subset of the columns, ONNX Runtime (float32
    input) gives scikit-learn's scores."""
    rng = np.random.default_rng(5)
    n = 1500
    rows = np.column_stack(
        [
            rng.normal(0, 1, n).round(3),
            rng.exponential(20, n).round(4),
            rng.choice([24, 25, 30, 50, 60], size=n),
            rng.integers(0, 4, size=n),
            rng.uniform(-1e4, 1e4, n),
        ]
    ).astype(np.float64)
    learner = make_learner("isolation_forest", {"n_estimators": 60, "max_features": 0.6}).fit(rows)
    session = onnx_session(learner.to_onnx())
    np.testing.assert_allclose(onnx_scores(session, rows), learner.anomaly_scores(rows)[0], atol=1e-6, rtol=0)


def test_thresholds_rounded_down_split_float32_rows_as_the_float64_thresholds_do():
    thresholds = np.array([0.1, 1 / 3, 2.5, -7.3, 1e-8, 16777217.0, 3.0000001])
    rounded = thresholds_for_float32(thresholds)
    for t64, t32 in zip(thresholds, rounded, strict=True):
        near = np.float32(t64)
        candidates = np.array([np.nextafter(near, -np.inf), near, np.nextafter(near, np.inf)], dtype=np.float32)
        np.testing.assert_array_equal(candidates <= t32, candidates.astype(np.float64) <= t64)


def test_nothing_outside_the_learners_names_a_learner_class():
    """Kinds extend by addition: the pipeline, spec and service reach learners through the
    registry and the task protocols, never a concrete class, and the pipeline switches on no type."""
    import ast
    from pathlib import Path

    import oddity.trainer

    concrete = {cls.__name__ for cls in BUILT_IN}
    package = Path(oddity.trainer.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("oddity.trainer.learners"):
                assert not {a.name for a in node.names} & concrete, f"{path.name} imports a learner class"
            if isinstance(node, ast.Name):
                assert node.id not in concrete, f"{path.name} names {node.id}"
    pipeline = ast.parse((package / "pipeline.py").read_text())
    calls = [n.func.id for n in ast.walk(pipeline) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "isinstance" not in calls and "issubclass" not in calls


def test_auto_records_what_its_members_cost_to_serve_and_ties_go_to_the_cheaper():
    from oddity.trainer.learners.selection import CHOICES, QUALITY_TIE, best_choice, serving_cost

    learner = make_learner("auto", {"trim": 0.0}).fit(ROWS)  # a table: kNN against every row
    assert learner.training_figures() == {"serving_multiply_adds_per_row": 800 * 7 + 5 * 6}
    assert serving_cost(CHOICES["mahalanobis+cosine"], 769, 3000) == 769 * 769 + 975 * 770 + 5 * 769
    mean_auc = {"knn": 0.80, "knn+cosine": 0.80 + QUALITY_TIE / 2, "knn+mahalanobis": 0.79}
    assert best_choice(mean_auc, 20, 50_000) == "knn"  # tied with knn+cosine, and cheaper
    assert best_choice({**mean_auc, "knn+cosine": 0.81}, 20, 50_000) == "knn+cosine"
