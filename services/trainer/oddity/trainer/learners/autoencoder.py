"""The autoencoder kind: a dense torch autoencoder whose reconstruction error is the score,
with standardization folded into the exported graph.

Reason to change: how autoencoders are sized, trained and exported.
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from oddity.common import bundle
from oddity.trainer.learners.base import Learner, Progress


class AutoencoderLearner(Learner):
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
        super().__init__(**params)
        self.hidden = params.get("hidden")
        self.bottleneck = params.get("bottleneck")
        self.epochs = int(params.get("epochs", 50))
        self.batch_size = int(params.get("batch_size", 64))
        self.learning_rate = float(params.get("learning_rate", 1e-3))
        self.patience = int(params.get("patience", 5))
        self.validation_fraction = float(params.get("validation_fraction", 0.1))
        self.seed = int(params.get("seed", 0))
        self.weight_decay = float(params.get("weight_decay", 1e-5))
        self.threads = int(params.get("threads", 1))

    @staticmethod
    def default_sizes(d: int) -> tuple[list[int], int]:
        """(hidden layers, bottleneck) scaled with the dimension. The bottleneck never drops
        below 8: squeezing a few features through 2 units leaves nothing to tell normal from
        unusual (a 5-feature set fell to chance), and early stopping keeps a wide code from
        learning the identity. Wide inputs (embeddings) get a wider first layer."""
        bottleneck = int(min(64, max(8, round(d**0.5))))
        hidden = int(min(256, max(64, 2 ** int(np.ceil(np.log2(max(d, 2)))) // 4)))
        return [hidden], bottleneck

    def _network(self, d: int):
        import torch

        default_hidden, default_bottleneck = self.default_sizes(d)
        hidden = list(self.hidden) if self.hidden is not None else default_hidden
        bottleneck = int(self.bottleneck or default_bottleneck)
        sizes = [d, *hidden, bottleneck, *reversed(hidden), d]
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
