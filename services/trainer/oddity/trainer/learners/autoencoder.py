"""The autoencoder kind: a dense torch autoencoder whose reconstruction error is the score,
with standardization folded into the exported graph (written from the weights: dense_graphs.py).

Training is cheap per row and dear per optimizer step (at batch 64 the step's fixed cost
dominates on CPU), so several autoencoders of one shape train side by side as one stack
(stacked_training.py): the served model and its cross-fitting fold models share every step,
which costs about as much as one model alone. Each model keeps its own rows, standardization,
validation split, batches and early stopping, so the served model starts, sees its batches and
stops as `fit` alone would have it (the same model up to floating-point rounding).

Reason to change: how autoencoders are sized, trained and exported.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from oddity.common import bundle
from oddity.trainer.learners.base import AnomalyLearner, Progress
from oddity.trainer.learners.dense_graphs import GraphBuilder, linear_layers
from oddity.trainer.learners.registry import register_learner
from oddity.trainer.learners.stacked_training import RowSet, StackRecipe, TrainedStack, train_stack


@register_learner
class AutoencoderLearner(AnomalyLearner):
    """Dense autoencoder (torch) with standardization folded into the exported graph."""

    kind = "autoencoder"
    explains = True
    progress_unit = "epoch"
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
        # Accepted so that specs written before still parse; torch's thread count is the
        # trainer's torch_threads setting, set once at start-up (runtime.py).
        "threads",
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.hidden = params.get("hidden")
        self.bottleneck = params.get("bottleneck")
        numbers = self._numbers(params)
        self.epochs = int(numbers["epochs"])
        self.batch_size = int(numbers["batch_size"])
        self.learning_rate = numbers["learning_rate"]
        self.patience = int(numbers["patience"])
        self.validation_fraction = numbers["validation_fraction"]
        self.weight_decay = numbers["weight_decay"]

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        cls._numbers(params)

    @staticmethod
    def _numbers(params: Mapping[str, Any]) -> dict[str, float]:
        """The numeric parameters, defaults filled in; ValueError for a value that is no number."""
        return {
            "epochs": int(params.get("epochs", 50)),
            "batch_size": int(params.get("batch_size", 64)),
            "learning_rate": float(params.get("learning_rate", 1e-3)),
            "patience": int(params.get("patience", 5)),
            "validation_fraction": float(params.get("validation_fraction", 0.1)),
            "weight_decay": float(params.get("weight_decay", 1e-5)),
            "threads": int(params.get("threads", 1)),
        }

    @staticmethod
    def default_sizes(d: int) -> tuple[list[int], int]:
        """(hidden layers, bottleneck) scaled with the dimension. The bottleneck never drops
        below 8: squeezing a few features through 2 units leaves nothing to tell normal from
        unusual (a 5-feature set fell to chance), and early stopping keeps a wide code from
        learning the identity. Wide inputs (embeddings) get a wider first layer."""
        bottleneck = int(min(64, max(8, round(d**0.5))))
        hidden = int(min(256, max(64, 2 ** int(np.ceil(np.log2(max(d, 2)))) // 4)))
        return [hidden], bottleneck

    def _sizes(self, d: int) -> list[int]:
        default_hidden, default_bottleneck = self.default_sizes(d)
        hidden = list(self.hidden) if self.hidden is not None else default_hidden
        bottleneck = int(self.bottleneck or default_bottleneck)
        return [d, *hidden, bottleneck, *reversed(hidden), d]

    def _recipe(self, d: int) -> StackRecipe:
        return StackRecipe(
            sizes=self._sizes(d),
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.patience,
            validation_fraction=self.validation_fraction,
            seed=self.seed,
        )

    def _train(
        self, x: np.ndarray, sets: list[np.ndarray], progress: Progress | None, first_leads: bool = False
    ) -> tuple[TrainedStack, list[RowSet]]:
        """Train one autoencoder per set of row numbers, side by side; each standardized on its own rows."""
        rows = []
        for numbers in sets:
            part = x[numbers]
            rows.append(
                RowSet(numbers, part.mean(axis=0).astype(np.float32), (part.std(axis=0) + 1e-6).astype(np.float32))
            )
        return train_stack(self._recipe(x.shape[1]), x, rows, progress, first_leads=first_leads), rows

    def _keep_first(self, stack: TrainedStack, rows: RowSet) -> None:
        """Model 0 of the stack becomes this learner's network."""
        import torch

        self.mean_, self.scale_ = rows.mean, rows.scale
        sizes = self._sizes(len(self.mean_))
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            linear = torch.nn.Linear(a, b)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(stack.weights[i][0].T))
                linear.bias.copy_(torch.from_numpy(stack.biases[i][0].reshape(-1)))
            layers.append(linear)
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.network_ = torch.nn.Sequential(*layers).eval()
        self.history_: list[float] = list(stack.histories[0])
        self.epochs_run_ = len(self.history_)
        self.best_loss_ = stack.best_losses[0]

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> AutoencoderLearner:
        stack, rows = self._train(x, [np.arange(len(x))], progress)
        self._keep_first(stack, rows[0])
        return self

    def training_figures(self) -> dict[str, float]:
        return {"epochs": self.epochs_run_, "validation_loss": self.best_loss_}

    def out_of_fold_scores(self, x: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """The fold models exactly as fit_cross_fitted trains them (beside a model on every row)."""
        return self.clone().fit_cross_fitted(x, folds)

    def fit_cross_fitted(self, x: np.ndarray, folds: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """The served model (on every row) and the fold models in one stack, at about one
        model's cost. The fold models train no longer than the served one, so their scores
        show what its training makes of rows it did not see."""
        labels = np.unique(folds)
        sets = [np.arange(len(x)), *(np.flatnonzero(folds != fold) for fold in labels)]
        stack, rows = self._train(x, sets, progress, first_leads=True)
        self._keep_first(stack, rows[0])
        scores = np.empty(len(x), dtype=np.float64)
        for model, fold in enumerate(labels, start=1):
            held = np.flatnonzero(folds == fold)
            scores[held] = stack.errors(model, rows[model].standardized(x, held)).mean(axis=1)
        return scores

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

        d = len(self.mean_)
        build = GraphBuilder("autoencoder_")
        z = build.standardized(bundle.INPUT_NAME, self.mean_, self.scale_)
        layers = linear_layers(m for m in self.network_ if isinstance(m, torch.nn.Linear))
        difference = build.node("Sub", [build.dense(z, layers, "layer"), z], "difference")
        errors = build.node("Mul", [difference, difference], bundle.FEATURE_ERRORS_OUTPUT)
        build.node("ReduceMean", [errors], bundle.SCORE_OUTPUT, axes=[1], keepdims=0)
        return build.model(
            "oddity_autoencoder",
            d,
            [
                helper.make_tensor_value_info(bundle.SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
                helper.make_tensor_value_info(bundle.FEATURE_ERRORS_OUTPUT, TensorProto.FLOAT, ["N", d]),
            ],
        )
