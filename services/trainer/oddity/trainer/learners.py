"""Model kinds. Each learner follows estimator conventions (`__init__` stores parameters,
`fit` returns self, learned attributes end in `_`) and exports an ONNX graph that keeps the
bundle contract: input "input" takes raw features (scaling inside the graph); anomaly
detectors output "score" (higher = more anomalous, autoencoders also "feature_errors"),
classifiers output "label" (class index) and "probabilities". Which kinds exist and what
task each serves is `oddity.common.bundle.KINDS`; LEARNERS has one learner per kind.

Reason to change: how a model kind is fitted and exported to ONNX.
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from oddity.common import bundle

# progress(epoch, total_epochs, loss)
Progress = Callable[[int, int, float], None]


def _check_params(kind: str, params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown {kind} parameters {unknown}; allowed: {sorted(allowed)}")


class _Learner:
    """What every learner shares: its kind, and what the kinds table says of it."""

    kind = ""

    @property
    def is_classifier(self) -> bool:
        return bundle.KINDS[self.kind].is_classifier


class AutoencoderLearner(_Learner):
    """Dense autoencoder (torch) with standardization folded into the exported graph."""

    kind = "autoencoder"
    PARAMS = {
        "hidden",
        "bottleneck",
        "epochs",
        "batch_size",
        "learning_rate",
        "patience",
        "validation_fraction",
        "seed",
        "weight_decay",
        "threads",
    }

    def __init__(self, **params: Any) -> None:
        _check_params(self.kind, params, self.PARAMS)
        self.hidden = list(params.get("hidden", [64]))
        self.bottleneck = params.get("bottleneck")
        self.epochs = int(params.get("epochs", 50))
        self.batch_size = int(params.get("batch_size", 64))
        self.learning_rate = float(params.get("learning_rate", 1e-3))
        self.patience = int(params.get("patience", 5))
        self.validation_fraction = float(params.get("validation_fraction", 0.1))
        self.seed = int(params.get("seed", 0))
        self.weight_decay = float(params.get("weight_decay", 0.0))
        self.threads = int(params.get("threads", 1))

    def _network(self, d: int):
        import torch

        bottleneck = int(self.bottleneck or max(2, min(8, d // 2)))
        sizes = [d, *self.hidden, bottleneck, *reversed(self.hidden), d]
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers)

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> AutoencoderLearner:
        import torch

        torch.set_num_threads(self.threads)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.mean_ = x.mean(axis=0).astype(np.float32)
        self.scale_ = (x.std(axis=0) + 1e-6).astype(np.float32)
        z = ((x - self.mean_) / self.scale_).astype(np.float32)
        order = rng.permutation(len(z))
        n_val = max(1, int(len(z) * self.validation_fraction)) if len(z) >= 20 else 0
        val, train = torch.from_numpy(z[order[:n_val]]), torch.from_numpy(z[order[n_val:]])
        self.network_ = self._network(x.shape[1])
        optimizer = torch.optim.Adam(self.network_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        generator = torch.Generator().manual_seed(self.seed)
        best, best_state, waited = float("inf"), None, 0
        self.history_: list[float] = []
        for epoch in range(1, self.epochs + 1):
            self.network_.train()
            for idx in torch.randperm(len(train), generator=generator).split(self.batch_size):
                batch = train[idx]
                optimizer.zero_grad()
                loss = torch.mean((self.network_(batch) - batch) ** 2)
                loss.backward()
                optimizer.step()
            self.network_.eval()
            with torch.no_grad():
                held = val if n_val else train
                val_loss = float(torch.mean((self.network_(held) - held) ** 2))
            self.history_.append(val_loss)
            if progress is not None:
                progress(epoch, self.epochs, val_loss)
            if val_loss < best - 1e-7:
                best, waited = val_loss, 0
                best_state = {k: v.clone() for k, v in self.network_.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            self.network_.load_state_dict(best_state)
        self.epochs_run_ = len(self.history_)
        self.best_loss_ = best
        return self

    def _scorer(self):
        import torch

        network, mean, scale = self.network_, torch.from_numpy(self.mean_), torch.from_numpy(self.scale_)

        class Scorer(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.network = network
                self.register_buffer("mean", mean)
                self.register_buffer("scale", scale)

            def forward(self, input):
                z = (input - self.mean) / self.scale
                errors = (self.network(z) - z) ** 2
                return errors.mean(dim=1), errors

        return Scorer().eval()

    def anomaly_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, feature errors) computed by torch: the parity reference."""
        import torch

        with torch.no_grad():
            score, errors = self._scorer()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return score.numpy().astype(np.float64), errors.numpy()

    def to_onnx(self) -> bytes:
        import torch

        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
            path = Path(folder) / "model.onnx"
            torch.onnx.export(
                self._scorer(),
                (torch.zeros(2, len(self.mean_)),),
                path,
                input_names=[bundle.INPUT_NAME],
                output_names=[bundle.SCORE_OUTPUT, bundle.FEATURE_ERRORS_OUTPUT],
                dynamic_axes={
                    bundle.INPUT_NAME: {0: "N"},
                    bundle.SCORE_OUTPUT: {0: "N"},
                    bundle.FEATURE_ERRORS_OUTPUT: {0: "N"},
                },
                opset_version=bundle.OPSET,
                dynamo=False,
            )
            model = onnx.load(path)
        model.ir_version = bundle.IR_VERSION
        return model.SerializeToString()


class _SklearnLearner(_Learner):
    """Shared by the scikit-learn kinds: a StandardScaler + estimator pipeline, exported with skl2onnx."""

    PARAMS: set[str] = set()

    def __init__(self, **params: Any) -> None:
        _check_params(self.kind, params, self.PARAMS | {"seed"})
        self.params = dict(params)
        self.seed = int(self.params.pop("seed", 0))

    def _estimator(self):
        raise NotImplementedError

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.estimator_ = self._estimator()
        self.pipeline_ = make_pipeline(StandardScaler(), self.estimator_)
        self.pipeline_.fit(x, y)
        if progress is not None:
            progress(1, 1, 0.0)
        return self

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


class _SklearnDetector(_SklearnLearner):
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


class IsolationForestLearner(_SklearnDetector):
    kind = "isolation_forest"
    PARAMS = {"n_estimators", "max_samples", "max_features"}

    def _estimator(self):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(random_state=self.seed, **{"n_estimators": 100, **self.params})


class OneClassSvmLearner(_SklearnDetector):
    kind = "one_class_svm"
    PARAMS = {"nu", "gamma", "kernel"}

    def _estimator(self):
        from sklearn.svm import OneClassSVM

        return OneClassSVM(**{"nu": 0.05, "gamma": "scale", **self.params})


class _SklearnClassifier(_SklearnLearner):
    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None):
        assert y is not None
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"the label column has one class only ({self.classes_[0]!r})")
        return super().fit(x, encoded, progress)

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


class RandomForestLearner(_SklearnClassifier):
    kind = "random_forest"
    PARAMS = {"n_estimators", "max_depth", "min_samples_leaf", "class_weight"}

    def _estimator(self):
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(random_state=self.seed, **{"n_estimators": 100, **self.params})


class SvmLearner(_SklearnClassifier):
    kind = "svm"
    PARAMS = {"C", "gamma", "kernel", "class_weight"}

    def _estimator(self):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        # Probabilities from a calibrated SVC (SVC(probability=True) is deprecated in scikit-learn).
        return CalibratedClassifierCV(SVC(random_state=self.seed, **self.params), ensemble=False)


class LogisticLearner(_SklearnClassifier):
    kind = "logistic"
    PARAMS = {"C", "class_weight", "max_iter"}

    def _estimator(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(**{"max_iter": 1000, **self.params})


LEARNERS = {
    cls.kind: cls
    for cls in (
        AutoencoderLearner,
        IsolationForestLearner,
        OneClassSvmLearner,
        RandomForestLearner,
        SvmLearner,
        LogisticLearner,
    )
}


def make_learner(kind: str, params: dict[str, Any]):
    try:
        return LEARNERS[kind](**params)
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(LEARNERS)}") from None
