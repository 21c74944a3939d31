"""The mlp_classifier kind: a torch multi-layer perceptron over table columns or embeddings
that predicts a class and, with a regression head, a continuous score next to it (a grade
and its quality score).

Built for labelled data as users have it: imbalanced classes (inverse-frequency class weights
and/or balanced batch sampling), optional focal loss and label smoothing, AdamW with weight
decay, gradient clipping, a cosine or plateau learning-rate schedule and early stopping on a
stratified validation split. After training, one temperature is fitted on the validation
rows (probabilities = softmax(logits / T)); standardization and the temperature are folded
into the exported graph. With a checkpoint store, training is saved every `checkpoint_every`
epochs (model, optimizer, schedule, early-stopping state and random generator), so a job
resumed from a checkpoint ends exactly as an uninterrupted one.

Reason to change: how the MLP classifier is sized, trained, calibrated and exported.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from onnx import TensorProto, helper
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from oddity.common import bundle
from oddity.common.bundle.contract import PREDICTED_SCORE_OUTPUT
from oddity.trainer import job_control
from oddity.trainer.checkpoints import GroupCheckpoints
from oddity.trainer.learners.base import ClassifierLearner, Progress
from oddity.trainer.learners.dense_graphs import GraphBuilder, linear_layers
from oddity.trainer.learners.registry import register_learner

MIN_VALIDATION_ROWS = 20  # below this many rows there is no validation split (nor temperature)
TEMPERATURE_BOUNDS = (0.05, 20.0)


class MlpParams(BaseModel):
    """The parameters of `model.params` for mlp_classifier (docs/datasets.md)."""

    model_config = ConfigDict(extra="forbid")

    hidden: list[int] | None = Field(None, min_length=1)  # default: one layer sized by the input
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(100, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # max gradient norm; 0: no clipping
    lr_schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    patience: int = Field(10, ge=0)  # epochs without a better validation loss; 0: no early stopping
    min_delta: float = Field(1e-4, ge=0)
    validation_fraction: float = Field(0.15, gt=0, lt=0.5)
    class_weight: Literal["balanced", "none"] = "balanced"
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    focal_gamma: float = Field(0.0, ge=0, le=10)  # 0: cross-entropy
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    temperature_scaling: bool = True
    score_weight: float = Field(1.0, ge=0)  # weight of the regression head's loss
    checkpoint_every: int = Field(5, ge=0)  # epochs; 0: no checkpoints
    # Accepted so that specs written before still parse; torch's thread count is the trainer's
    # torch_threads setting, set once at start-up (runtime.py).
    threads: int = Field(1, ge=1, le=64)
    seed: int = 0


@register_learner
class MlpClassifierLearner(ClassifierLearner):
    """Dense classifier (torch) with standardization and temperature folded into the graph."""

    kind = "mlp_classifier"
    score_head = True
    progress_unit = "epoch"
    PARAMS = set(MlpParams.model_fields)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.config = self._config(params)

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        cls._config(params)

    @staticmethod
    def _config(params: Mapping[str, Any]) -> MlpParams:
        try:
            return MlpParams.model_validate(params)
        except ValidationError as exc:  # the spec shows this message
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"mlp_classifier parameters: {problems}") from None

    @staticmethod
    def default_hidden(d: int) -> list[int]:
        """One hidden layer between 32 and 256 units, wider for wide inputs (embeddings)."""
        return [int(min(256, max(32, 2 ** int(np.ceil(np.log2(max(d, 2)))))))]

    # -- training ------------------------------------------------------------------------

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        progress: Progress | None = None,
        *,
        targets: np.ndarray | None = None,
        checkpoints: GroupCheckpoints | None = None,
    ) -> MlpClassifierLearner:
        import torch

        if y is None:
            raise ValueError("mlp_classifier is a classifier and needs labels")
        config = self.config
        self.classes_, encoded = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"the label column has one class only ({self.classes_[0]!r})")
        n_classes = len(self.classes_)
        x = np.ascontiguousarray(x, dtype=np.float32)
        self.mean_ = x.mean(axis=0).astype(np.float32)
        self.scale_ = (x.std(axis=0) + 1e-6).astype(np.float32)
        z = (x - self.mean_) / self.scale_
        self.has_score_ = targets is not None
        if targets is not None:
            self.target_mean_ = float(np.mean(targets))
            self.target_scale_ = float(np.std(targets) + 1e-9)
            t = ((np.asarray(targets, dtype=np.float64) - self.target_mean_) / self.target_scale_).astype(np.float32)
        val_idx, train_idx = _stratified_split(encoded, config.validation_fraction, config.seed)
        xs, ys = torch.from_numpy(z), torch.from_numpy(encoded.astype(np.int64))
        ts = torch.from_numpy(t) if targets is not None else None
        train_rows, val_rows = torch.from_numpy(train_idx), torch.from_numpy(val_idx)

        counts = np.bincount(encoded[train_idx], minlength=n_classes).astype(np.float64)
        present = counts > 0
        # Inverse frequency, as scikit-learn's class_weight="balanced": n / (classes * count).
        weights = np.ones(n_classes)
        if config.class_weight == "balanced":
            weights[present] = counts.sum() / (present.sum() * counts[present])
        class_weights = torch.tensor(weights, dtype=torch.float32)
        sample_weights = torch.tensor(1.0 / np.maximum(counts, 1.0)[encoded[train_idx]], dtype=torch.float64)

        generator = torch.Generator().manual_seed(config.seed)
        self.network_ = _torch_modules().Network(
            x.shape[1],
            config.hidden or self.default_hidden(x.shape[1]),
            n_classes,
            config.dropout,
            self.has_score_,
            generator,
            config.seed,
        )
        optimizer = torch.optim.AdamW(
            self.network_.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        scheduler = _scheduler(optimizer, config)
        key = _key(x, encoded, targets, self.params)

        best, best_state, best_epoch, waited = float("inf"), None, 0, 0
        self.history_: list[dict[str, float]] = []
        self.resumed_from_epoch_ = 0
        restored = checkpoints.load(key) if checkpoints is not None else None
        if restored is not None:
            epoch, state = restored
            self.network_.load_state_dict(state["network"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            best, best_epoch, waited = float(state["best_loss"]), int(state["best_epoch"]), int(state["waited"])
            best_state = state["best_state"] or None
            self.history_ = [dict(h) for h in state["history"]]
            self.resumed_from_epoch_ = epoch

        def criterion(rows: torch.Tensor) -> torch.Tensor:
            logits, score = self.network_(xs[rows])
            loss = _class_loss(logits, ys[rows], class_weights, config.focal_gamma, config.label_smoothing)
            if ts is not None and score is not None and config.score_weight > 0:
                loss = loss + config.score_weight * torch.mean((score - ts[rows]) ** 2)
            return loss

        for epoch in range(self.resumed_from_epoch_ + 1, config.epochs + 1):
            self.network_.train()
            if config.sampler == "balanced":  # every class drawn equally often, with replacement
                order = train_rows[torch.multinomial(sample_weights, len(train_rows), True, generator=generator)]
            else:
                order = train_rows[torch.randperm(len(train_rows), generator=generator)]
            total, seen = 0.0, 0
            for batch in order.split(config.batch_size):
                job_control.check()  # a stop or a spent time budget ends the job within one batch
                optimizer.zero_grad()
                loss = criterion(batch)
                loss.backward()
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.network_.parameters(), config.grad_clip)
                optimizer.step()
                total += float(loss.detach()) * len(batch)
                seen += len(batch)
            train_loss = total / max(seen, 1)
            self.network_.eval()
            with torch.no_grad():
                held = val_rows if len(val_rows) else train_rows
                val_loss = float(criterion(held))
                predicted = self.network_(xs[held])[0].argmax(dim=1).numpy()
            truth = encoded[held.numpy()]
            figures = {
                "train_loss": train_loss,
                "validation_loss": val_loss,
                "validation_accuracy": float(np.mean(predicted == truth)),
                "validation_balanced_accuracy": _balanced_accuracy(truth, predicted),
                "learning_rate": float(optimizer.param_groups[0]["lr"]),
            }
            self.history_.append({"epoch": float(epoch), **figures})
            if scheduler is not None:
                if config.lr_schedule == "plateau":
                    scheduler.step(val_loss)
                else:
                    scheduler.step()
            if val_loss < best - config.min_delta:
                best, best_epoch, waited = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in self.network_.state_dict().items()}
            else:
                waited += 1
            stop = config.patience > 0 and waited >= config.patience
            due = config.checkpoint_every > 0 and epoch % config.checkpoint_every == 0
            if checkpoints is not None and due and not stop and epoch < config.epochs:  # not after the last
                state = {
                    "network": self.network_.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "generator": generator.get_state(),
                    "best_loss": best,
                    "best_epoch": best_epoch,
                    "waited": waited,
                    "best_state": best_state or {},
                    "history": self.history_,
                }
                checkpoints.save(key, epoch, state)
            if progress is not None:
                progress(epoch, config.epochs, val_loss, figures)
            if stop:
                break
        if best_state is not None:
            self.network_.load_state_dict(best_state)
        self.network_.eval()
        self.epochs_run_ = len(self.history_)
        self.best_epoch_ = best_epoch
        self.best_loss_ = best
        self.temperature_ = 1.0
        if config.temperature_scaling and len(val_idx) >= MIN_VALIDATION_ROWS // 2:
            self.temperature_ = fit_temperature(self.logits(x[val_idx]), encoded[val_idx])
        self.validation_rows_ = len(val_idx)
        return self

    # -- the framework reference ---------------------------------------------------------

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Class logits before the temperature, [N, C]."""
        import torch

        z = torch.from_numpy((np.ascontiguousarray(x, dtype=np.float32) - self.mean_) / self.scale_)
        with torch.no_grad():
            return self.network_(z)[0].numpy()

    def predict_proba(self, x: np.ndarray, *, calibrated: bool = True) -> np.ndarray:
        """Class probabilities computed by torch (the parity reference): softmax(logits / T),
        or with `calibrated=False` softmax(logits)."""
        import torch

        scorer = self._scorer(self.temperature_ if calibrated else 1.0)
        with torch.no_grad():
            return scorer(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[1].numpy()

    def uncalibrated_proba(self, x: np.ndarray) -> np.ndarray:
        return self.predict_proba(x, calibrated=False)

    @property
    def temperature(self) -> float:
        return self.temperature_

    def training_figures(self) -> dict[str, float]:
        return {"epochs": self.epochs_run_, "best_epoch": self.best_epoch_}

    def epoch_history(self) -> list[dict[str, float]]:
        return list(self.history_)

    @property
    def resumed_from_epoch(self) -> int:
        return self.resumed_from_epoch_

    def predict_scores(self, x: np.ndarray) -> np.ndarray | None:
        """The regression head's value per row, in the score column's units (None: no head)."""
        import torch

        if not self.has_score_:
            return None
        with torch.no_grad():
            return self._scorer(self.temperature_)(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))[
                2
            ].numpy()

    def _scorer(self, temperature: float):
        """The served computation as a torch module: raw rows in; label, probabilities (and the
        score) out: the reference the ONNX graph (to_onnx) is checked against."""
        target = (self.target_mean_, self.target_scale_) if self.has_score_ else None
        return _torch_modules().Scorer(self.network_, self.mean_, self.scale_, temperature, target).eval()

    def to_onnx(self) -> bytes:
        """The served computation (the torch Scorer's) written from the weights: raw rows in;
        label, softmax(logits / T) and, with a regression head, the score in its own units."""
        import torch

        network = self.network_
        build = GraphBuilder("mlp_")
        z = build.standardized(bundle.INPUT_NAME, self.mean_, self.scale_)
        hidden = linear_layers(m for m in network.trunk if isinstance(m, torch.nn.Linear))
        h = build.dense(z, hidden, "trunk", relu_last=True)  # dropout is the identity when serving
        logits = build.dense(h, linear_layers([network.classes]), "classes")
        scaled = build.node("Div", [logits, build.const("temperature", self.temperature_)], "scaled")
        probabilities = build.node("Softmax", [scaled], bundle.PROBABILITIES_OUTPUT, axis=1)
        build.node("ArgMax", [probabilities], bundle.LABEL_OUTPUT, axis=1, keepdims=0)
        classes = len(self.classes_)
        outputs = [
            helper.make_tensor_value_info(bundle.LABEL_OUTPUT, TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info(bundle.PROBABILITIES_OUTPUT, TensorProto.FLOAT, ["N", classes]),
        ]
        if self.has_score_:
            standardized = build.dense(h, linear_layers([network.score]), "score")
            flat = build.node("Reshape", [standardized, build.const("flat", [-1], np.int64)], "score_flat")
            scaled_score = build.node("Mul", [flat, build.const("target_scale", self.target_scale_)], "score_scaled")
            build.node("Add", [scaled_score, build.const("target_mean", self.target_mean_)], PREDICTED_SCORE_OUTPUT)
            outputs.append(helper.make_tensor_value_info(PREDICTED_SCORE_OUTPUT, TensorProto.FLOAT, ["N"]))
        return build.model("oddity_mlp_classifier", len(self.mean_), outputs)


@functools.cache
def _torch_modules():
    """The torch modules, defined on first use: importing the learners (to check a spec's
    parameters) does not import torch."""
    import torch

    class SeededDropout(torch.nn.Module):
        """Dropout drawing its masks from the learner's own generator (not torch's global one),
        so a checkpoint's generator state is all it takes to continue exactly; the identity in
        eval mode, and so absent from the exported graph."""

        def __init__(self, p: float, generator: torch.Generator) -> None:
            super().__init__()
            self.p = p
            self.generator = generator

        def forward(self, x):
            if not self.training or self.p == 0:
                return x
            keep = torch.rand(x.shape, generator=self.generator) >= self.p
            return x * keep / (1.0 - self.p)

    class Network(torch.nn.Module):
        """Standardized rows -> hidden layers -> class logits (and the standardized score)."""

        def __init__(
            self,
            d: int,
            hidden: list[int],
            classes: int,
            dropout: float,
            score_head: bool,
            generator: torch.Generator,
            seed: int,
        ) -> None:
            super().__init__()
            # Initial weights from the seed, without disturbing torch's global generator.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                layers: list[torch.nn.Module] = []
                width = d
                for size in hidden:
                    layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), SeededDropout(dropout, generator)]
                    width = size
                self.trunk = torch.nn.Sequential(*layers)
                self.classes = torch.nn.Linear(width, classes)
                self.score = torch.nn.Linear(width, 1) if score_head else None

        def forward(self, z):
            h = self.trunk(z)
            return self.classes(h), (self.score(h).reshape(-1) if self.score is not None else None)

    class Scorer(torch.nn.Module):
        """Raw rows -> label, softmax(logits / temperature) and the score in its own units."""

        def __init__(
            self,
            network: torch.nn.Module,
            mean: np.ndarray,
            scale: np.ndarray,
            temperature: float,
            target: tuple[float, float] | None,
        ) -> None:
            super().__init__()
            self.network = network
            self.has_score = target is not None
            target_mean, target_scale = target or (0.0, 1.0)
            self.register_buffer("mean", torch.from_numpy(mean))
            self.register_buffer("scale", torch.from_numpy(scale))
            self.register_buffer("temperature", torch.tensor(temperature, dtype=torch.float32))
            self.register_buffer("target_mean", torch.tensor(target_mean, dtype=torch.float32))
            self.register_buffer("target_scale", torch.tensor(target_scale, dtype=torch.float32))

        def forward(self, input):
            logits, score = self.network((input - self.mean) / self.scale)
            probabilities = torch.softmax(logits / self.temperature, dim=1)
            label = torch.argmax(probabilities, dim=1)
            if not self.has_score:
                return label, probabilities
            return label, probabilities, score * self.target_scale + self.target_mean

    return types.SimpleNamespace(SeededDropout=SeededDropout, Network=Network, Scorer=Scorer)


def _scheduler(optimizer, config: MlpParams):
    import torch

    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=max(1, config.patience // 3))
    return None


def _class_loss(logits, target, weights, gamma: float, smoothing: float):
    """Class-weighted cross-entropy with label smoothing; with gamma > 0 the focal loss
    (each class's term scaled by (1 - p)^gamma, so easy rows count less). The weighted mean
    over rows: every class contributes by its weight, whatever the batch's mix."""
    import torch

    log_p = torch.log_softmax(logits, dim=1)
    classes = logits.shape[1]
    q = torch.nn.functional.one_hot(target, classes).to(log_p.dtype) * (1.0 - smoothing) + smoothing / classes
    per_class = -q * log_p
    if gamma > 0:
        per_class = per_class * (1.0 - log_p.exp()).clamp(min=0.0) ** gamma
    row_weights = weights[target]
    return (per_class.sum(dim=1) * row_weights).sum() / row_weights.sum()


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T minimizing the negative log-likelihood of softmax(logits / T) on
    these rows (one parameter: the predicted class never changes, only how sure it is).
    A golden-section search over log T within TEMPERATURE_BOUNDS (the likelihood is unimodal
    in T); 1 unless another temperature fits better."""
    logits = logits.astype(np.float64)
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        scaled -= scaled.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(scaled).sum(axis=1)) - scaled[rows, labels]))

    low, high = float(np.log(TEMPERATURE_BOUNDS[0])), float(np.log(TEMPERATURE_BOUNDS[1]))
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    while high - low > 1e-6:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    best = (low + high) / 2.0
    return float(np.exp(best)) if nll(best) < nll(0.0) else 1.0


def _stratified_split(encoded: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation rows, training rows): `fraction` of each class (at least one of a class with
    two or more rows) held out for early stopping and the temperature; none below 20 rows."""
    if len(encoded) < MIN_VALIDATION_ROWS:
        return np.empty(0, dtype=np.int64), np.arange(len(encoded), dtype=np.int64)
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(encoded):
        members = rng.permutation(np.flatnonzero(encoded == c))
        k = min(len(members) - 1, max(1, round(len(members) * fraction))) if len(members) >= 2 else 0
        held.append(members[:k])
    val = np.sort(np.concatenate(held)).astype(np.int64)
    mask = np.ones(len(encoded), dtype=bool)
    mask[val] = False
    return val, np.flatnonzero(mask).astype(np.int64)


def _balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    recalls = [float(np.mean(predicted[truth == c] == c)) for c in np.unique(truth)]
    return float(np.mean(recalls)) if recalls else 0.0


def _key(x: np.ndarray, encoded: np.ndarray, targets: np.ndarray | None, params: Mapping[str, Any]) -> str:
    """What a checkpoint was trained on: the rows, their classes and scores, the parameters."""
    digest = hashlib.sha256()
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(encoded, dtype=np.int64).tobytes())
    if targets is not None:
        digest.update(np.ascontiguousarray(targets, dtype=np.float64).tobytes())
    return digest.hexdigest()
