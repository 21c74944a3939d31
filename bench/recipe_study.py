"""The default kind's recipe choice, judged leaving one dataset out (part of bench/quality.py).

The default (auto) trains the recipe its profile names (oddity.trainer.learners.selection:
RECIPES, chosen among CHOICES by mean ROC-AUC on the development sets of that profile). Here
every alternative of CHOICES is trained in-process with the trainer's own learners (auto with
the alternative as its candidates: the same trimming and calibration) on the benchmark's
splits. Then, for each set, the alternative with the best mean AUC over the *other* sets of
its profile is the leave-one-out choice (the trainer's own rule, `selection.best_choice`: among
alternatives tied within QUALITY_TIE, the cheaper to serve on rows of those sets' shape); for
embeddings the whole collection (CIFAR10_*, SVHN_*) is left out, as its sets are alike.
Printed: the leave-one-out mean AUC per group beside the in-sample choice's and the shipped
recipe's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from oddity.trainer.learners import make_anomaly_learner
from oddity.trainer.learners.selection import CHOICES, RECIPES, best_choice, profile


@dataclass
class StudyRun:
    set: str
    group: str
    profile: str
    aucs: dict[str, float]  # alternative -> ROC-AUC on this split
    shape: tuple[int, int]  # training rows, features


def collection(name: str) -> str:
    """Sets that share a source (CIFAR10_0 and CIFAR10_4) form one collection."""
    return name.split("_")[0] if "resnet" in name or "bert" in name or "vit" in name else name


def study_split(name: str, group: str, seed: int, train: np.ndarray, test: np.ndarray, y: np.ndarray, auc) -> StudyRun:
    aucs = {}
    for alternative, recipe in CHOICES.items():
        learner = make_anomaly_learner("auto", {"candidates": [dict(m) for m in recipe], "seed": seed})
        learner.fit(train.astype(np.float64))
        aucs[alternative] = auc(y, learner.anomaly_scores(test.astype(np.float64))[0])
    return StudyRun(name, group, profile(train, seed).kind, aucs, train.shape)


def summarize(runs: list[StudyRun]) -> dict[str, Any]:
    """Per profile: each alternative's mean AUC over sets, the in-sample winner, the shipped
    recipe, and per group the leave-one-out mean AUC."""
    by_set: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    kind_of, group_of, shape_of = {}, {}, {}
    for run in runs:
        kind_of[run.set], group_of[run.set], shape_of[run.set] = run.profile, run.group, run.shape
        for alternative, value in run.aucs.items():
            by_set[run.set][alternative].append(value)
    mean = {s: {a: float(np.mean(v)) for a, v in alts.items()} for s, alts in by_set.items()}

    def best(sets: list[str]) -> str:
        rows, features = (int(np.median([shape_of[s][i] for s in sets])) for i in (0, 1))
        return best_choice({a: float(np.mean([mean[s][a] for s in sets])) for a in CHOICES}, features, rows)

    profiles: dict[str, Any] = {}
    for kind in sorted(set(kind_of.values())):
        sets = [s for s in mean if kind_of[s] == kind]
        profiles[kind] = {
            "sets": sets,
            "mean_auc": {a: float(np.mean([mean[s][a] for s in sets])) for a in CHOICES},
            "in_sample_choice": best(sets),
            "shipped": RECIPES[kind],
        }
    loo: dict[str, dict[str, Any]] = {}
    for name in mean:
        others = [s for s in mean if kind_of[s] == kind_of[name] and collection(s) != collection(name)]
        choice = best(others) if others else RECIPES[kind_of[name]]
        loo[name] = {"choice": choice, "auc": mean[name][choice]}
    groups: dict[str, Any] = {}
    for group in sorted(set(group_of.values())):
        sets = [s for s in mean if group_of[s] == group]
        groups[group] = {
            "leave_one_out": float(np.mean([loo[s]["auc"] for s in sets])),
            "in_sample": float(np.mean([mean[s][profiles[kind_of[s]]["in_sample_choice"]] for s in sets])),
            "shipped": float(np.mean([mean[s][RECIPES[kind_of[s]]] for s in sets])),
        }
    return {"profiles": profiles, "leave_one_out": loo, "groups": groups, "per_set": mean}


def print_summary(summary: dict[str, Any]) -> None:
    print("\nDefault recipe, judged leaving one dataset (embeddings: one collection) out")
    for kind, row in summary["profiles"].items():
        ranked = sorted(row["mean_auc"].items(), key=lambda kv: -kv[1])
        shipped, best = row["shipped"], row["in_sample_choice"]
        print(f"  profile {kind} ({len(row['sets'])} sets): shipped {shipped}, in-sample best {best}")
        print("    " + ", ".join(f"{a} {v:.3f}" for a, v in ranked))
    print(f"  {'group':<12} {'leave-one-out':>13} {'in-sample':>9} {'shipped':>8}")
    for group, row in summary["groups"].items():
        print(f"  {group:<12} {row['leave_one_out']:>13.3f} {row['in_sample']:>9.3f} {row['shipped']:>8.3f}")
    profile_of = {s: kind for kind, row in summary["profiles"].items() for s in row["sets"]}
    changed = {
        s: r["choice"]
        for s, r in summary["leave_one_out"].items()
        if r["choice"] != summary["profiles"][profile_of[s]]["in_sample_choice"]
    }
    if changed:
        listed = ", ".join(f"{s} ({c})" for s, c in changed.items())
        print(f"  sets whose leave-one-out choice differs from the in-sample one: {listed}")
