"""In-process baselines for `bench/quality.py`, run on exactly the rows Oddity gets.

Every baseline fits on the training normals only (semi-supervised, like the trainer) and
returns one score per test row, higher = more anomalous. Inputs are standardized with the
training rows' mean and deviation, as the product does inside its graphs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

KNN_K = 5
IFOREST_TREES = 200
AE_HIDDEN, AE_BOTTLENECK = 64, 8
AE_EPOCHS, AE_BATCH, AE_LR = 50, 64, 1e-3

PYOD_AUTO = "pyod-auto"


@dataclass
class BaselineScores:
    scores: np.ndarray
    note: str = ""  # e.g. the detector PyOD's automatic choice picked


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scaler = StandardScaler().fit(train)  # zero-variance columns keep scale 1
    return scaler.transform(train).astype(np.float32), scaler.transform(test).astype(np.float32)


def knn_scores(train: np.ndarray, test: np.ndarray, seed: int) -> BaselineScores:
    """Mean distance to the k nearest training rows (PyOD's KNN with method='mean')."""
    distances, _ = NearestNeighbors(n_neighbors=min(KNN_K, len(train))).fit(train).kneighbors(test)
    return BaselineScores(distances.mean(axis=1))


def iforest_scores(train: np.ndarray, test: np.ndarray, seed: int) -> BaselineScores:
    forest = IsolationForest(n_estimators=IFOREST_TREES, random_state=seed).fit(train)
    return BaselineScores(-forest.score_samples(test))  # scikit-learn: higher = more normal


def seeds_network(d: int):
    """The seeds' autoencoder: in->64->8->64->in, ReLU."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(d, AE_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(AE_HIDDEN, AE_BOTTLENECK),
        torch.nn.ReLU(),
        torch.nn.Linear(AE_BOTTLENECK, AE_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(AE_HIDDEN, d),
    )


def train_seeds_network(rows: np.ndarray, epochs: float, seed: int):
    """The seeds' recipe: Adam, batch AE_BATCH, a fixed number of epochs (no early stopping,
    no validation split); a fraction of an epoch runs that share of its steps."""
    import torch

    torch.manual_seed(seed)
    network = seeds_network(rows.shape[1])
    optimizer = torch.optim.Adam(network.parameters(), lr=AE_LR)
    data = torch.from_numpy(rows)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(rows) // AE_BATCH)
    budget = int(epochs * steps_per_epoch)
    network.train()
    while budget > 0:
        for idx in torch.randperm(len(data), generator=generator).split(AE_BATCH)[:budget]:
            batch = data[idx]
            optimizer.zero_grad()
            loss = torch.mean((network(batch) - batch) ** 2)
            loss.backward()
            optimizer.step()
        budget -= steps_per_epoch
    return network.eval()


def autoencoder_scores(train: np.ndarray, test: np.ndarray, seed: int) -> BaselineScores:
    """The seeds' autoencoder trained for AE_EPOCHS, reconstruction MSE as the score."""
    import torch

    network = train_seeds_network(train, AE_EPOCHS, seed)
    with torch.no_grad():
        held = torch.from_numpy(test)
        return BaselineScores(torch.mean((network(held) - held) ** 2, dim=1).numpy().astype(np.float64))


def pyod_auto_unavailable() -> str:
    """Why PyOD's automatic detector choice cannot run here, or "" when it can."""
    try:
        from pyod.utils.ad_engine import ADEngine  # noqa: F401  (PyOD 3)
    except ImportError as exc:
        return f"PyOD's ADEngine is not available ({exc}); install pyod>=3.5.2 to add it. Skipped."
    return ""


@functools.cache
def _engine(seed: int):
    from pyod.utils.ad_engine import ADEngine

    return ADEngine(random_state=seed)  # loading its knowledge base takes a moment: once per seed


def pyod_auto_scores(train: np.ndarray, test: np.ndarray, seed: int) -> BaselineScores:
    """PyOD 3's ADEngine: profile the training rows, let it plan (its rules choose the
    detector and parameters), fit on the training normals, score the test rows."""
    engine = _engine(seed)
    plan = engine.plan_detection(engine.profile_data(train))
    detector = engine.build_detector(plan)
    detector.fit(train)
    return BaselineScores(np.asarray(detector.decision_function(test), dtype=np.float64), plan["detector_name"])


BASELINES: dict[str, Callable[[np.ndarray, np.ndarray, int], BaselineScores]] = {
    "knn": knn_scores,
    "iforest": iforest_scores,
    "autoencoder": autoencoder_scores,
    PYOD_AUTO: pyod_auto_scores,
}
