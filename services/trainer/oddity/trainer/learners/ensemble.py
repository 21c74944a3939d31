"""The ensemble and auto kinds: several detectors on one score scale.

`ensemble`: members (any anomaly kinds, with their parameters and weights) are fitted on all
rows; each member's score is mapped onto a common scale by its out-of-fold empirical CDF
(calibration.to_common_scale), and the score is the weighted mean. One ONNX graph per group
holds every member (onnx_graphs.ensemble_graph); explanations come from the members that
have them.

`auto` (the default kind): no labels exist, so candidates are weighed by how well each one
separates held-out normal rows from synthetic anomalies made from them — local (a normal
row nudged by half a standard deviation per feature), dependency (each feature drawn from a
different normal row: marginals kept, relations broken) and clustered (tight clumps near
normal rows) — then combined as an ensemble with weights (AUC - 0.5)^4: a candidate that is
clearly better on the synthetic test dominates, close candidates share. The default
candidates are kNN on standardized features and kNN on cosine (direction) distance: kNN is
the strongest single detector on real tabular benchmarks, the cosine variant on embeddings.
`candidates` may add autoencoder, isolation_forest or one_class_svm; `budget_seconds` bounds
the time spent weighing them (candidates past it are left out and say so in the evidence).

Reason to change: how detectors are combined, and how the default chooses among them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from oddity.trainer import calibration, job_control
from oddity.trainer.learners.base import AnomalyLearner, Member, Progress
from oddity.trainer.learners.registry import learner_class, make_anomaly_learner, register_learner
from oddity.trainer.onnx_graphs import MemberGraph, ensemble_graph
from oddity.trainer.validation import onnx_scores, onnx_session

# Error shares of rows whose total error is below this are ~0 (a row next to its own copy),
# not the ratio of two rounding errors.
SHARE_FLOOR = 1e-6
# A candidate whose ONNX graph (float32) cannot reproduce its scores on the common scale within
# this is left out (e.g. cosine distances among thousands of nearly parallel rows).
PARITY_TOLERANCE = 1e-3
PARITY_ROWS = 2000
EVIDENCE_POWER = 4.0
DEFAULT_CANDIDATES: list[dict[str, Any]] = [
    {"kind": "knn", "params": {"metric": "euclidean"}},
    {"kind": "knn", "params": {"metric": "cosine"}},
]


def _member_class(kind: str) -> type[AnomalyLearner]:
    """The learner class of a member kind: any registered anomaly detector but a combined one."""
    try:
        cls = learner_class(kind)
    except ValueError:
        cls = None
    if cls is None or not issubclass(cls, AnomalyLearner) or issubclass(cls, EnsembleLearner):
        raise ValueError(f"ensemble members must be anomaly detectors (knn, autoencoder, ...), got {kind!r}")
    return cls


def _check_members(members: list[Member], seed: int) -> None:
    """Every member's kind and parameters, checked without building a learner."""
    for member in members:
        _member_class(member.kind).check_params({**member.params, "seed": seed})


def _make(kind: str, params: dict[str, Any]) -> AnomalyLearner:
    _member_class(kind)
    return make_anomaly_learner(kind, params)


def _parse_members(raw: Any, where: str) -> list[Member]:
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{where} must be a non-empty list of {{kind, params, weight}}")
    members = []
    for entry in raw:
        if isinstance(entry, str):
            entry = {"kind": entry}
        if not isinstance(entry, dict) or "kind" not in entry or set(entry) - {"kind", "params", "weight"}:
            raise ValueError(f"each of {where} is {{kind, params (optional), weight (optional)}}, got {entry!r}")
        weight = float(entry.get("weight", 1.0))
        if weight < 0:
            raise ValueError(f"{where}: weights must be >= 0")
        members.append(Member(entry["kind"], dict(entry.get("params") or {}), weight))
    return members


DEFAULT_MEMBERS: list[dict[str, Any]] = [{"kind": "knn"}, {"kind": "autoencoder"}]


@register_learner
class EnsembleLearner(AnomalyLearner):
    kind = "ensemble"
    explains = True  # when a member does
    progress_unit = "member"
    PARAMS = {"members"}
    # Which parameter lists the members, its default, and what its errors call it.
    MEMBERS_PARAM, DEFAULT_MEMBERS, MEMBERS_NAME = "members", DEFAULT_MEMBERS, "ensemble members"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.members = self._members(params)

    @classmethod
    def _members(cls, params: Mapping[str, Any]) -> list[Member]:
        return _parse_members(params.get(cls.MEMBERS_PARAM, cls.DEFAULT_MEMBERS), cls.MEMBERS_NAME)

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        _check_members(cls._members(params), int(params.get("seed", 0)))

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> EnsembleLearner:
        self._fit_members([m for m in self.members if m.weight > 0], x, progress)
        return self

    def _fit_members(
        self, members: list[Member], x: np.ndarray, progress: Progress | None, *, check_parity: bool = False
    ) -> None:
        """Fit each member on every row, table its out-of-fold CDF, combine. With check_parity,
        members whose ONNX graph cannot reproduce them are left out (at least one stays)."""
        if not members:
            raise ValueError("the ensemble has no member with a positive weight")
        folds = calibration.make_folds(len(x), self.seed)
        fitted = []
        for i, member in enumerate(members):
            job_control.check()
            learner = _make(member.kind, {**member.params, "seed": self.seed})
            oof = learner.fit_cross_fitted(x, folds)
            fitted.append((member, learner, calibration.score_table(oof), oof))
            if progress is not None:
                progress(i + 1, len(members), 0.0)
        if check_parity:
            gaps = [_common_scale_gap(learner, table, x, self.seed) for _, learner, table, _ in fitted]
            keep = [gap <= PARITY_TOLERANCE for gap in gaps]
            if not any(keep):
                keep[int(np.argmin(gaps))] = True
            for (member, *_), kept, gap in zip(fitted, keep, gaps, strict=True):
                if not kept:
                    member.weight = 0.0
                    member.note = (
                        f"left out: ONNX Runtime (float32) reproduces its scores only within {gap:.2g} on the "
                        f"common scale (tolerance {PARITY_TOLERANCE:g})"
                    )
            fitted = [f for f, kept in zip(fitted, keep, strict=True) if kept]
        total = sum(member.weight for member, *_ in fitted)
        self.members_ = [member for member, *_ in fitted]
        self.learners_: list[AnomalyLearner] = [learner for _, learner, _, _ in fitted]
        self.tables_: list[tuple[np.ndarray, np.ndarray]] = [table for _, _, table, _ in fitted]
        self.oof_ = sum(
            (member.weight / total * calibration.to_common_scale(oof, *table) for member, _, table, oof in fitted),
            start=np.zeros(len(x)),
        )
        self.dimension_ = x.shape[1]

    def anomaly_scores(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        total = sum(m.weight for m in self.members_)
        score = np.zeros(len(x))
        shares, share_total = np.zeros(x.shape, dtype=np.float64), 0.0
        for member, learner, table in zip(self.members_, self.learners_, self.tables_, strict=True):
            raw, errors = learner.anomaly_scores(x)
            score += member.weight / total * calibration.to_common_scale(raw, *table)
            if errors is not None:
                row = np.maximum(errors.sum(axis=1, keepdims=True), SHARE_FLOOR)
                shares += member.weight * errors / row
                share_total += member.weight
        return score, (shares / share_total).astype(np.float32) if share_total else None

    def out_of_fold_scores(self, x: np.ndarray, folds: np.ndarray) -> np.ndarray:
        """The ensemble's own cross-fitting, made in fit (each member's out-of-fold scores on
        the common scale); `x` must be the rows it was fitted on."""
        if len(x) != len(self.oof_):
            raise ValueError("out-of-fold scores exist for the fitted rows only")
        return self.oof_

    def to_onnx(self) -> bytes:
        graphs = [
            MemberGraph(learner.to_onnx(), table[0], table[1], member.weight)
            for member, learner, table in zip(self.members_, self.learners_, self.tables_, strict=True)
        ]
        return ensemble_graph(graphs, self.dimension_, SHARE_FLOOR)

    def evidence(self) -> list[Member]:
        """Every member considered, with its weight and the evidence behind it."""
        return list(self.members_)


@register_learner
class AutoLearner(EnsembleLearner):
    kind = "auto"
    PARAMS = {"candidates", "budget_seconds", "holdout_fraction"}
    MEMBERS_PARAM, DEFAULT_MEMBERS, MEMBERS_NAME = "candidates", DEFAULT_CANDIDATES, "auto candidates"

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.budget_seconds = float(params.get("budget_seconds", 300.0))
        self.holdout_fraction = float(params.get("holdout_fraction", 0.2))

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        float(params.get("budget_seconds", 300.0))
        if not 0.05 <= float(params.get("holdout_fraction", 0.2)) <= 0.5:
            raise ValueError("auto: holdout_fraction must lie in [0.05, 0.5]")

    def fit(self, x: np.ndarray, y: np.ndarray | None = None, progress: Progress | None = None) -> AutoLearner:
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(x))
        n_held = min(len(x) - 10, max(10, int(len(x) * self.holdout_fraction)))
        held, rest = x[order[:n_held]], x[order[n_held:]]
        synthetic = make_synthetic_anomalies(held, rest.std(axis=0), rng)
        started = time.perf_counter()
        weighed: list[Member] = []
        for member in self.members:
            job_control.check()
            if time.perf_counter() - started > self.budget_seconds and weighed:
                member.weight, member.note = 0.0, f"skipped: past budget_seconds {self.budget_seconds:g}"
                weighed.append(member)
                continue
            learner = _make(member.kind, {**member.params, "seed": self.seed}).fit(rest)
            normal_scores = learner.anomaly_scores(held)[0]
            for name, rows in synthetic.items():
                job_control.check()
                member.synthetic_auc[name] = roc_auc(normal_scores, learner.anomaly_scores(rows)[0])
            auc = float(np.mean(list(member.synthetic_auc.values())))
            member.weight = max(auc - 0.5, 0.0) ** EVIDENCE_POWER
            weighed.append(member)
        if not any(m.weight > 0 for m in weighed):
            for member in weighed:  # no candidate beats chance on the synthetic test: weigh them equally
                if not member.note:
                    member.weight = 1.0
        self.considered_ = weighed
        self._fit_members([m for m in weighed if m.weight > 0], x, progress, check_parity=True)
        return self

    def evidence(self) -> list[Member]:
        return list(self.considered_)


def make_synthetic_anomalies(normal: np.ndarray, scale: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Synthetic anomalies built from held-out normal rows (see the module docstring)."""
    n, d = normal.shape
    m = max(50, n)
    scale = np.where(scale > 0, scale, 1.0)
    local = normal[rng.integers(0, n, m)] + rng.normal(0.0, 0.5, (m, d)) * scale
    dependency = np.stack([normal[rng.integers(0, n, m), j] for j in range(d)], axis=1)
    centres = normal[rng.integers(0, n, 4)] + rng.normal(0.0, 1.5, (4, d)) * scale
    clustered = centres[rng.integers(0, 4, m)] + rng.normal(0.0, 0.1, (m, d)) * scale
    return {"local": local, "dependency": dependency, "clustered": clustered}


def roc_auc(normal_scores: np.ndarray, anomaly_scores: np.ndarray) -> float:
    """P(anomaly scores above a normal row), ties counted half (the Mann-Whitney statistic)."""
    scores = np.concatenate([normal_scores, anomaly_scores])
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    n_normal, n_anomaly = len(normal_scores), len(anomaly_scores)
    rank_sum = ranks[n_normal:].sum()
    return float((rank_sum - n_anomaly * (n_anomaly + 1) / 2) / (n_normal * n_anomaly))


def _common_scale_gap(learner: AnomalyLearner, table: tuple[np.ndarray, np.ndarray], x: np.ndarray, seed: int) -> float:
    """Largest difference, on the common scale, between the member's ONNX graph and the member."""
    job_control.check()
    sample = x[np.random.default_rng(seed).permutation(len(x))[:PARITY_ROWS]]
    exported = onnx_scores(onnx_session(learner.to_onnx()), sample)
    reference = learner.anomaly_scores(sample)[0]
    gap = np.abs(calibration.to_common_scale(exported, *table) - calibration.to_common_scale(reference, *table))
    return float(np.max(gap)) if np.isfinite(gap).all() else float("inf")
