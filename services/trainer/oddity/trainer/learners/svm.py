"""The svm kind: a kernel SVM classifier whose probabilities come from sigmoid calibration on
out-of-fold decision values (scikit-learn's CalibratedClassifierCV around an SVC; the SVC's
own `probability=True` is deprecated in scikit-learn 1.9 and gone in 1.11).

The ONNX graph is written here from the fitted model's public attributes, not by skl2onnx,
whose SVC converter reads the deprecated `probA_`: standardization, the kernel between the
row and every support vector, the one-vs-one decision values (one matrix product with the
dual coefficients), scikit-learn's one-vs-rest transform of them (votes plus a tie-breaking
confidence), one sigmoid per class and their normalization. Outputs as every classifier's:
"label" (int64, the class index) and "probabilities" [N, C] (float32; computed in float64).

Reason to change: how the SVM classifier is fitted, calibrated and exported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import SVC

from oddity.common import bundle
from oddity.trainer.learners.registry import register_learner
from oddity.trainer.learners.scikit import SklearnClassifier
from oddity.trainer.onnx_graphs import contract_model

KERNELS = ("linear", "poly", "rbf", "sigmoid")


@register_learner
class SvmLearner(SklearnClassifier):
    kind = "svm"
    PARAMS = {"C", "gamma", "kernel", "class_weight"}

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        kernel = params.get("kernel", "rbf")
        if kernel not in KERNELS:
            raise ValueError(f"svm: kernel must be one of {list(KERNELS)}, got {kernel!r}")

    def _estimator(self) -> CalibratedClassifierCV:
        return CalibratedClassifierCV(SVC(random_state=self.seed, **self.estimator_params), ensemble=False)

    def _fit_pipeline(self, x: np.ndarray, y: np.ndarray | None, progress: Any) -> None:
        super()._fit_pipeline(x, y, progress)
        # The gamma the served SVC used, as scikit-learn resolves "scale" and "auto": from the
        # standardized rows it was fitted on (all of them: ensemble=False).
        svc = self.estimator_.calibrated_classifiers_[0].estimator
        z = np.asarray(self.pipeline_[:-1].transform(x), dtype=np.float64)
        if svc.gamma == "scale":
            variance = z.var()
            self.gamma_ = 1.0 / (z.shape[1] * variance) if variance != 0 else 1.0
        elif svc.gamma == "auto":
            self.gamma_ = 1.0 / z.shape[1]
        else:
            self.gamma_ = float(svc.gamma)

    def to_onnx(self) -> bytes:
        return svm_graph(self, self.pipeline_.n_features_in_).SerializeToString()


def _pair_matrices(svc: SVC) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The dual coefficients as one [support vectors, pairs] matrix, and the pairs (i < j) in
    libsvm's order: decision(i, j) = kernel row . column + intercept."""
    classes = len(svc.classes_)
    starts = np.concatenate([[0], np.cumsum(svc.n_support_)])
    pairs = [(i, j) for i in range(classes) for j in range(i + 1, classes)]
    weights = np.zeros((len(svc.support_vectors_), len(pairs)))
    for k, (i, j) in enumerate(pairs):
        weights[starts[i] : starts[i + 1], k] = svc.dual_coef_[j - 1, starts[i] : starts[i + 1]]
        weights[starts[j] : starts[j + 1], k] = svc.dual_coef_[i, starts[j] : starts[j + 1]]
    return weights, pairs


def _const(name: str, value: Any, dtype: Any = np.float64) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def svm_graph(learner: SvmLearner, d: int) -> onnx.ModelProto:
    """label and probabilities of the learner's pipeline (StandardScaler + calibrated SVC)."""
    scaler = learner.pipeline_[0]
    calibrated = learner.estimator_.calibrated_classifiers_[0]
    svc: SVC = calibrated.estimator
    classes = len(svc.classes_)
    vectors = svc.support_vectors_.astype(np.float64)
    weights, pairs = _pair_matrices(svc)
    init = [
        _const("svm_mean", scaler.mean_),
        _const("svm_scale", scaler.scale_),
        _const("svm_vectors_t", vectors.T),
        _const("svm_weights", weights),
        _const("svm_intercept", svc.intercept_),
        _const("svm_gamma", learner.gamma_),
        _const("svm_coef0", svc.coef0),
        _const("svm_degree", float(svc.degree)),
        _const("svm_axis1", [1], np.int64),
    ]
    nodes = [
        # In float64 throughout, as scikit-learn computes: float32 sums over hundreds of
        # support vectors drift by ~1e-5 in probability.
        helper.make_node("Cast", [bundle.INPUT_NAME], ["svm_input"], to=TensorProto.DOUBLE),
        helper.make_node("Sub", ["svm_input", "svm_mean"], ["svm_centred"]),
        helper.make_node("Div", ["svm_centred", "svm_scale"], ["svm_z"]),
        helper.make_node("MatMul", ["svm_z", "svm_vectors_t"], ["svm_dot"]),  # [N, SV]
    ]
    kernel = svc.kernel
    if kernel == "linear":
        nodes.append(helper.make_node("Identity", ["svm_dot"], ["svm_kernel"]))
    elif kernel in ("poly", "sigmoid"):
        nodes += [
            helper.make_node("Mul", ["svm_dot", "svm_gamma"], ["svm_scaled"]),
            helper.make_node("Add", ["svm_scaled", "svm_coef0"], ["svm_shifted"]),
            helper.make_node("Pow", ["svm_shifted", "svm_degree"], ["svm_kernel"])
            if kernel == "poly"
            else helper.make_node("Tanh", ["svm_shifted"], ["svm_kernel"]),
        ]
    elif kernel == "rbf":
        # |z - v|^2 = |z|^2 + |v|^2 - 2 z.v, never below 0 after rounding.
        init += [
            _const("svm_vectors_sq", (vectors**2).sum(axis=1)[None, :]),
            _const("svm_minus_two", -2.0),
            _const("svm_zero", 0.0),
            _const("svm_minus_gamma", -learner.gamma_),
        ]
        nodes += [
            helper.make_node("Mul", ["svm_z", "svm_z"], ["svm_z_squares"]),
            helper.make_node("ReduceSum", ["svm_z_squares", "svm_axis1"], ["svm_z_sq"], keepdims=1),
            helper.make_node("Mul", ["svm_dot", "svm_minus_two"], ["svm_cross"]),
            helper.make_node("Add", ["svm_z_sq", "svm_vectors_sq"], ["svm_squares"]),
            helper.make_node("Add", ["svm_squares", "svm_cross"], ["svm_d2_raw"]),
            helper.make_node("Max", ["svm_d2_raw", "svm_zero"], ["svm_d2"]),
            helper.make_node("Mul", ["svm_d2", "svm_minus_gamma"], ["svm_exponent"]),
            helper.make_node("Exp", ["svm_exponent"], ["svm_kernel"]),
        ]
    else:
        raise ValueError(f"svm: cannot export kernel {kernel!r}")
    nodes += [
        helper.make_node("MatMul", ["svm_kernel", "svm_weights"], ["svm_pair_dot"]),
        helper.make_node("Add", ["svm_pair_dot", "svm_intercept"], ["svm_decision"]),  # [N, pairs]
    ]
    if classes == 2:
        response = "svm_decision"  # [N, 1]: positive means the second class
    else:
        # scikit-learn's one-vs-rest view (decision_function_shape="ovr"): per class, its votes
        # plus the summed confidences squeezed into (-1/3, 1/3).
        wins, losses = np.zeros((len(pairs), classes)), np.zeros((len(pairs), classes))
        for k, (i, j) in enumerate(pairs):
            wins[k, i], losses[k, j] = 1.0, 1.0
        init += [
            _const("svm_first", wins),
            _const("svm_second", losses),
            _const("svm_confidence_sign", wins - losses),
            _const("svm_zero_decision", 0.0),
            _const("svm_one", 1.0),
            _const("svm_three", 3.0),
        ]
        nodes += [
            helper.make_node("Less", ["svm_decision", "svm_zero_decision"], ["svm_second_wins"]),
            helper.make_node("Not", ["svm_second_wins"], ["svm_first_wins"]),
            helper.make_node("Cast", ["svm_first_wins"], ["svm_first_votes"], to=TensorProto.DOUBLE),
            helper.make_node("Cast", ["svm_second_wins"], ["svm_second_votes"], to=TensorProto.DOUBLE),
            helper.make_node("MatMul", ["svm_first_votes", "svm_first"], ["svm_votes_first"]),
            helper.make_node("MatMul", ["svm_second_votes", "svm_second"], ["svm_votes_second"]),
            helper.make_node("Add", ["svm_votes_first", "svm_votes_second"], ["svm_votes"]),
            helper.make_node("MatMul", ["svm_decision", "svm_confidence_sign"], ["svm_confidence"]),
            helper.make_node("Abs", ["svm_confidence"], ["svm_confidence_abs"]),
            helper.make_node("Add", ["svm_confidence_abs", "svm_one"], ["svm_confidence_plus"]),
            helper.make_node("Mul", ["svm_confidence_plus", "svm_three"], ["svm_confidence_den"]),
            helper.make_node("Div", ["svm_confidence", "svm_confidence_den"], ["svm_confidence_squeezed"]),
            helper.make_node("Add", ["svm_votes", "svm_confidence_squeezed"], ["svm_ovr"]),
        ]
        response = "svm_ovr"
    # Sigmoid calibration per response column: p = 1 / (1 + exp(a f + b)).
    a = np.array([c.a_ for c in calibrated.calibrators], dtype=np.float64)
    b = np.array([c.b_ for c in calibrated.calibrators], dtype=np.float64)
    init += [_const("svm_minus_a", -a), _const("svm_minus_b", -b)]
    nodes += [
        helper.make_node("Mul", [response, "svm_minus_a"], ["svm_logit_scaled"]),
        helper.make_node("Add", ["svm_logit_scaled", "svm_minus_b"], ["svm_logit"]),
        helper.make_node("Sigmoid", ["svm_logit"], ["svm_calibrated"]),
    ]
    if classes == 2:
        init.append(_const("svm_one_p", 1.0))
        nodes += [
            helper.make_node("Sub", ["svm_one_p", "svm_calibrated"], ["svm_first_p"]),
            helper.make_node("Concat", ["svm_first_p", "svm_calibrated"], ["svm_probabilities"], axis=1),
        ]
    else:
        # Normalized to sum 1; rows whose every sigmoid is 0 get the uniform distribution.
        init += [_const("svm_uniform", 1.0 / classes), _const("svm_zero_p", 0.0)]
        nodes += [
            helper.make_node("ReduceSum", ["svm_calibrated", "svm_axis1"], ["svm_total"], keepdims=1),
            helper.make_node("Greater", ["svm_total", "svm_zero_p"], ["svm_has_total"]),
            helper.make_node("Div", ["svm_calibrated", "svm_total"], ["svm_normalized"]),
            helper.make_node("Where", ["svm_has_total", "svm_normalized", "svm_uniform"], ["svm_probabilities"]),
        ]
    nodes += [
        helper.make_node("ArgMax", ["svm_probabilities"], [bundle.LABEL_OUTPUT], axis=1, keepdims=0),
        helper.make_node("Cast", ["svm_probabilities"], [bundle.PROBABILITIES_OUTPUT], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "oddity_svm",
        [helper.make_tensor_value_info(bundle.INPUT_NAME, TensorProto.FLOAT, ["N", d])],
        [
            helper.make_tensor_value_info(bundle.LABEL_OUTPUT, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(bundle.PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["N", classes]),
        ],
        init,
    )
    return contract_model(graph)
