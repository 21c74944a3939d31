"""The scikit-learn kinds: isolation forest and one-class SVM detectors, random forest and
logistic classifiers; a StandardScaler + estimator pipeline exported with skl2onnx (the
isolation forest's graph is built from its trees directly: tree_graphs.py; the SVM classifier
is svm.py).

Reason to change: how scikit-learn models are fitted and exported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from oddity.common import bundle
from oddity.trainer import job_control
from oddity.trainer.checkpoints import GroupCheckpoints
from oddity.trainer.learners.base import AnomalyLearner, ClassifierLearner, Learner, Progress
from oddity.trainer.learners.registry import register_learner
from oddity.trainer.learners.tree_graphs import isolation_forest_graph


class _SklearnLearner(Learner):
    """Shared by the scikit-learn kinds: a StandardScaler + estimator pipeline, exported with skl2onnx."""

    #: Standardize the features first. Trees split on raw values and need no scaling; scaling
    #: them would only let float32 rounding in the ONNX graph flip splits on tied values.
    SCALE = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.estimator_params = {k: v for k, v in params.items() if k != "seed"}

    def _estimator(self):
        raise NotImplementedError

    def _fit_pipeline(self, x: np.ndarray, y: np.ndarray | None, progress: Progress | None) -> None:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.estimator_ = self._estimator()
        self.pipeline_ = make_pipeline(*([StandardScaler()] if self.SCALE else []), self.estimator_)
        # One scikit-learn call cannot be stopped inside: the limits are checked on each side
        # of it (its rows are bounded by training.max_rows).
        job_control.check()
        self.pipeline_.fit(x, y)
        job_control.check()
        if progress is not None:
            progress(1, 1, 0.0)

    def _convert(self, d: int, options: dict | None = None) -> onnx.ModelProto:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        return convert_sklearn(
            self.pipeline_,
            initial_types=[(bundle.INPUT_NAME, FloatTensorType([None, d]))],
            target_opset={"": bundle.OPSET, "ai.onnx.ml": bundle.ML_OPSET},
            options=options,
            # skl2onnx's identity-removal pass takes seconds on tree ensembles and saves nothing
            # that ONNX Runtime's own optimizer does not.
            model_optim=False,
        )


class _SklearnDetector(_SklearnLearner, AnomalyLearner):
    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> _SklearnDetector:
        self._fit_pipeline(x, None, progress)
        return self

    def anomaly_scores(self, x: np.ndarray) -> tuple[np.ndarray, None]:
        # scikit-learn: higher decision_function = more normal; Oddity: higher = more anomalous.
        return -self.pipeline_.decision_function(x).astype(np.float64), None

    def to_onnx(self) -> bytes:
        model = self._convert(self.pipeline_.n_features_in_)
        graph = model.graph
        scores = next(o.name for o in graph.output if o.name != "label")
        graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), "oddity_flat"))
        graph.node.extend(
            [
                helper.make_node("Neg", [scores], ["oddity_negated"]),
                helper.make_node("Reshape", ["oddity_negated", "oddity_flat"], [bundle.SCORE_OUTPUT]),
            ]
        )
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info(bundle.SCORE_OUTPUT, onnx.TensorProto.FLOAT, ["N"]))
        model.ir_version = bundle.IR_VERSION
        return model.SerializeToString()


@register_learner
class IsolationForestLearner(_SklearnDetector):
    kind = "isolation_forest"
    SCALE = False
    PARAMS = {"n_estimators", "max_samples", "max_features"}

    def _estimator(self):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(random_state=self.seed, **{"n_estimators": 100, **self.estimator_params})

    def to_onnx(self) -> bytes:
        # One tree-ensemble node built from the trees' arrays: skl2onnx's graph takes seconds
        # per 100 trees to build and to load (tree_graphs.py).
        return isolation_forest_graph(self.estimator_, self.pipeline_.n_features_in_).SerializeToString()


@register_learner
class OneClassSvmLearner(_SklearnDetector):
    kind = "one_class_svm"
    PARAMS = {"nu", "gamma", "kernel"}

    def _estimator(self):
        from sklearn.svm import OneClassSVM

        return OneClassSVM(**{"nu": 0.05, "gamma": "scale", **self.estimator_params})


class SklearnClassifier(_SklearnLearner, ClassifierLearner):
    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        progress: Progress | None = None,
        *,
        targets: np.ndarray | None = None,
        checkpoints: GroupCheckpoints | None = None,
    ) -> SklearnClassifier:
        if y is None:
            raise ValueError(f"{self.kind} is a classifier and needs labels")
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"the label column has one class only ({self.classes_[0]!r})")
        self._fit_pipeline(x, encoded, progress)
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.pipeline_.predict_proba(x)

    def to_onnx(self) -> bytes:
        model = self._convert(self.pipeline_.n_features_in_, options={id(self.estimator_): {"zipmap": False}})
        graph = model.graph
        renames = {graph.output[0].name: bundle.LABEL_OUTPUT, graph.output[1].name: bundle.PROBABILITIES_OUTPUT}
        for node in graph.node:
            node.output[:] = [renames.get(o, o) for o in node.output]
        for output in graph.output:
            output.name = renames.get(output.name, output.name)
        model.ir_version = bundle.IR_VERSION
        return model.SerializeToString()


@register_learner
class RandomForestLearner(SklearnClassifier):
    kind = "random_forest"
    PARAMS = {"n_estimators", "max_depth", "min_samples_leaf", "class_weight"}
    SCALE = False

    def _estimator(self):
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=self.seed, **{"n_estimators": 100, **self.estimator_params})


@register_learner
class LogisticLearner(SklearnClassifier):
    kind = "logistic"
    PARAMS = {"C", "class_weight", "max_iter"}

    def _estimator(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(**{"max_iter": 1000, **self.estimator_params})
