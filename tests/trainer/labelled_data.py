"""Labelled data made up for the supervised tests: scanned documents graded Very Poor .. High
by a hidden quality (0-100) that the scan's features reflect with noise. Grades come in the
proportions users have them: few very poor and few excellent scans, many in between (10:1
between the largest and the smallest class)."""

from __future__ import annotations

import numpy as np
import pandas as pd

GRADES = ("Very Poor", "Poor", "Moderate", "Good", "High")
# Rows per grade at scale 1: 10:1 between the largest class and the smallest.
COUNTS = {"Very Poor": 40, "Poor": 400, "Moderate": 400, "Good": 400, "High": 40}
FEATURES = [f"scan_{i}" for i in range(8)]


def graded_scans(scale: float = 1.0, seed: int = 0, noise: float = 0.5) -> pd.DataFrame:
    """Columns: the scan features, `grade` (the class) and `quality` (its continuous score)."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(1234).normal(size=(2, len(FEATURES)))  # the same scanner for every call
    frames = []
    for i, grade in enumerate(GRADES):
        n = round(COUNTS[grade] * scale)
        quality = rng.uniform(i / len(GRADES), (i + 1) / len(GRADES), n)
        features = np.c_[quality, np.sin(3 * quality)] @ mixing + noise * rng.normal(size=(n, len(FEATURES)))
        frame = pd.DataFrame(features, columns=FEATURES)
        frame["grade"] = grade
        frame["quality"] = np.round(100 * quality, 2)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def defects(n: int, seed: int, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels): parts labelled defect or ok with a chance that rises with two features,
    so even the best model is unsure of many rows (its probabilities can be judged)."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(n, d)).astype(np.float32)
    chance = 1.0 / (1.0 + np.exp(-(1.5 * rows[:, 0] - rows[:, 1])))
    return rows, np.where(rng.uniform(size=n) < chance, "defect", "ok")
