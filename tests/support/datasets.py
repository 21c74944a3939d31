"""Datasets written to a temporary data volume, the way users drop them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from tests.support.models import normal_rows


def sensor_frame(n: int, d: int = 8, seed: int = 0) -> pd.DataFrame:
    """Correlated sensor readings: normal operation."""
    return pd.DataFrame(normal_rows(n, d, seed=seed), columns=[f"sensor_{i}" for i in range(d)])


def anomalies(normal: pd.DataFrame, seed: int = 1) -> pd.DataFrame:
    """Half a shifted cluster, half rows whose correlations are broken."""
    rng = np.random.default_rng(seed)
    n = len(normal)
    shifted = normal.iloc[: n // 2].to_numpy() + 4 * normal.std().to_numpy()
    broken = normal.iloc[n // 2 :].to_numpy().copy()
    for row in broken:
        rng.shuffle(row)
    return pd.DataFrame(np.vstack([shifted, broken]), columns=normal.columns)


def write_dataset(volume: Path, name: str, spec: dict, files: dict[str, pd.DataFrame | bytes]) -> Path:
    folder = volume / "datasets" / name
    folder.mkdir(parents=True, exist_ok=True)
    for file_name, content in files.items():
        path = folder / file_name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif file_name.endswith(".xlsx"):
            content.to_excel(path, index=False)
        else:
            content.to_csv(path, index=False)
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def autoencoder_spec(**overrides) -> dict:
    spec = {
        "sources": [{"path": "*.csv"}],
        "features": {"exclude": []},
        "model": {"kind": "autoencoder", "params": {"epochs": 30, "hidden": [32], "bottleneck": 4, "patience": 5}},
        "min_samples": 200,
        "retrain": {"policy": "on_change", "debounce_seconds": 0.2},
    }
    spec.update(overrides)
    return spec
