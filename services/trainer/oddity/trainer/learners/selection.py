"""What the default kind (auto) trains: a recipe chosen by the rows' profile.

No labels exist at training time, and weighing candidates by how they separate synthetic
anomalies did not tell good candidates from bad ones on real data (a candidate with a real
ROC-AUC of 0.74 got less weight than one with 0.48). What does hold, measured on the
development corpus (bench/quality.py, judged leaving one dataset out):

- on tables, kNN on standardized features is the strongest single detector, and adding other
  detectors to it cost more on the sets where they fail than it gained where they shine;
- on embeddings (dense vectors from an image or text encoder), the Gaussian view of the normal
  rows (Mahalanobis distance under a shrinkage covariance; Rippel et al., ICPR 2020) and kNN on
  directions (cosine) each see what the other misses: together they beat either alone and
  every baseline.

So the rows are profiled (`profile`): many continuous features is what an encoder's output
looks like; anything else is a table. The recipe of each profile (RECIPES) is the alternative
of CHOICES with the best mean ROC-AUC on the development sets of that profile; bench/quality.py
re-derives the choice leaving each dataset out and prints both. Alternatives whose mean
ROC-AUCs tie (within QUALITY_TIE) are told apart by what they cost to serve (`serving_cost`,
multiply-adds per scored row; `best_choice`): the cheaper one wins.

Reason to change: which detectors the default trains, and on what evidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from oddity.trainer.learners.knn import default_reference_cap

TABLE, EMBEDDING = "table", "embedding"
# An encoder's vectors have hundreds of dimensions, each taking many values; tables that wide
# are one-hot, count or binary columns, which take few.
EMBEDDING_MIN_FEATURES = 128
EMBEDDING_MIN_DISTINCT = 0.1  # mean share of distinct values per column, over a sample of rows
PROFILE_ROWS = 2000
# Mean ROC-AUCs closer than this are a tie, decided by the serving cost.
QUALITY_TIE = 0.002

Recipe = tuple[dict[str, Any], ...]

KNN: Recipe = ({"kind": "knn", "params": {"metric": "euclidean", "k": 5}},)
# The alternatives judged for each profile, by name; RECIPES names the one each profile trains.
CHOICES: dict[str, Recipe] = {
    "knn": KNN,
    "knn+cosine": (*KNN, {"kind": "knn", "params": {"metric": "cosine", "k": 5}}),
    "knn+mahalanobis": (*KNN, {"kind": "mahalanobis"}),
    "knn-whitened": ({"kind": "knn", "params": {"metric": "whitened", "k": 5}},),
    "mahalanobis+cosine": ({"kind": "mahalanobis"}, {"kind": "knn", "params": {"metric": "cosine", "k": 5}}),
}
RECIPES: dict[str, str] = {TABLE: "knn", EMBEDDING: "mahalanobis+cosine"}


@dataclass(frozen=True)
class Profile:
    kind: str  # TABLE or EMBEDDING
    features: int
    distinct: float  # mean share of distinct values per column

    def describe(self) -> str:
        looks = "an encoder's vectors" if self.kind == EMBEDDING else "a table"
        return f"{looks} ({self.features} features, {self.distinct:.0%} distinct values per column)"


def profile(x: np.ndarray, seed: int = 0) -> Profile:
    """What the rows look like, from a seeded sample of them."""
    sample = x
    if len(x) > PROFILE_ROWS:
        sample = x[np.sort(np.random.default_rng(seed).choice(len(x), PROFILE_ROWS, replace=False))]
    d = x.shape[1]
    distinct = float(np.mean([len(np.unique(sample[:, j])) for j in range(d)]) / max(len(sample), 1)) if d else 0.0
    wide = d >= EMBEDDING_MIN_FEATURES and distinct >= EMBEDDING_MIN_DISTINCT
    return Profile(EMBEDDING if wide else TABLE, d, distinct)


def recipe_for(found: Profile) -> tuple[str, Recipe]:
    name = RECIPES[found.kind]
    return name, CHOICES[name]


def serving_cost(recipe: Recipe, features: int, rows: int) -> int | None:
    """Multiply-adds per scored row of the recipe's graphs, fitted on `rows` rows of `features`
    columns: their matrix products, which their serving time follows. None when a member's
    kind has no estimate here."""
    total = 0
    for member in recipe:
        params = member.get("params", {})
        if member["kind"] == "knn":
            reference = min(rows, int(params.get("max_reference") or default_reference_cap(features)))
            whitening = features * features if params.get("metric") == "whitened" else 0
            # The ranking product, then the exact distances to the k nearest.
            total += reference * (features + 1) + int(params.get("k", 5)) * features + whitening
        elif member["kind"] in ("mahalanobis", "pca"):
            total += features * features
        else:
            return None
    return total


def best_choice(mean_auc: dict[str, float], features: int, rows: int) -> str:
    """The alternative of CHOICES with the best mean ROC-AUC; among those tied with it (within
    QUALITY_TIE), the cheapest to serve on rows of this shape."""
    top = max(mean_auc.values())
    tied = [name for name, value in mean_auc.items() if value >= top - QUALITY_TIE]
    return min(tied, key=lambda name: (serving_cost(CHOICES[name], features, rows) or 0, -mean_auc[name]))
