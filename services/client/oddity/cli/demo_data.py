"""The demo's sample datasets, written the way users drop data: files first, dataset.yaml
last, into `<folder>/datasets/<name>/`; and for each, held-out rows or items to score with
what they are (`expected`: normal or anomalous; the decision log's true `decision`) in
`<folder>/demo/<name>-held-out.csv` (outside datasets/: the trainer never trains on them).

- `demo-sensors`: a machine's six correlated readings (two hidden factors drive them), normal
  operation only; held out: normal rows, rows with one sensor off, rows whose relations are
  broken (each reading taken from another moment). The default detector (`auto`).
- `demo-decisions`: a device log of access decisions (approve/deny) and the signals behind
  them; a random forest classifier.
- `demo-drawings`: children's drawings with the child's age, one model per age group (routing
  by age), embedded by the embedder's image model `vit`.
- `demo-texts`: short delivery-support messages, embedded by the text model `minilm`; held
  out: more such messages and off-topic ones.
- `demo-library`: a made-up tagged image library (demo_library.py: faces, houses, cars) with a
  `similarity:` section, embedded by `vit`; held out: one new image whose tags are asked for.

The same seed writes the same bytes, so a second run on the same folder finds its models
already trained.

Reason to change: what the demo's data look like.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

Kind = Literal["anomaly", "classifier", "images", "texts", "library"]
EXPECTED = "expected"  # held-out column: normal or anomalous
NORMAL, ANOMALOUS = "normal", "anomalous"
DECISION_FEATURES = ["signal_dbm", "battery_pct", "failed_login_rate", "km_from_home", "hour"]
DECISION = "decision"
POSITIVE_CLASS = "deny"  # the decision log's class scored as "flagged"
AGE_BOUNDS = (3, 6, 9, 12)
RETRAIN = "retrain: {policy: on_change, debounce_seconds: 1}\n"


@dataclass(frozen=True)
class DemoDataset:
    name: str  # folder under datasets/ and model name
    kind: Kind
    held_out: Path  # CSV of what to score, with the truth
    embedder_model: str | None = None  # the embedder model it needs


def held_out_path(root: Path, name: str) -> Path:
    return root / "demo" / f"{name}-held-out.csv"


def _write_spec(folder: Path, spec: str) -> None:
    """dataset.yaml last, written then renamed: the trainer sees the dataset once it is whole."""
    partial = folder / "dataset.yaml.tmp"
    partial.write_text(spec)
    partial.replace(folder / "dataset.yaml")


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    frame.to_csv(partial, index=False)
    partial.replace(path)


# -- sensors ------------------------------------------------------------------------------


def sensor_rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Normal operation: two hidden factors (load, speed) drive six readings, plus noise."""
    load, speed = rng.normal(size=n), rng.normal(size=n)

    def noise(scale: float) -> np.ndarray:
        return rng.normal(scale=scale, size=n)

    return pd.DataFrame(
        {
            "temperature": 60 + 5 * load + noise(0.5),
            "pressure": 2.0 + 0.3 * load + 0.2 * speed + noise(0.05),
            "flow": 10 + 2 * speed + noise(0.3),
            "power": 5 + 0.8 * load + 0.8 * speed + noise(0.2),
            "vibration": 0.5 + 0.05 * load - 0.05 * speed + noise(0.02),
            "rpm": 1500 + 100 * speed + noise(10),
        }
    ).round(4)


def sensor_anomalies(normal: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Half: one sensor off by 4 to 6 of its standard deviations; half: each reading taken
    from another row (every value is ordinary, their relations are not)."""
    n = len(normal)
    values = normal.to_numpy().copy()
    std = normal.std().to_numpy()
    half = n // 2
    for row in range(half):
        column = int(rng.integers(0, values.shape[1]))
        values[row, column] += rng.choice([-1, 1]) * rng.uniform(4, 6) * std[column]
    for column in range(values.shape[1]):
        values[half:, column] = rng.permutation(values[half:, column])
    return pd.DataFrame(values, columns=normal.columns).round(4)


def write_sensors(root: Path, rng: np.random.Generator) -> DemoDataset:
    name = "demo-sensors"
    folder = root / "datasets" / name
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(sensor_rows(500, rng), folder / "readings.csv")
    normal = sensor_rows(100, rng)
    anomalous = sensor_anomalies(sensor_rows(100, rng), rng)
    held_out = pd.concat([normal.assign(**{EXPECTED: NORMAL}), anomalous.assign(**{EXPECTED: ANOMALOUS})])
    _write_csv(held_out, held_out_path(root, name))
    _write_spec(
        folder,
        "# A machine's readings in normal operation; the default detector (auto).\n"
        "sources:\n  - path: readings.csv\n" + RETRAIN,
    )
    return DemoDataset(name, "anomaly", held_out_path(root, name))


# -- decisions ----------------------------------------------------------------------------


def decision_rows(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Access requests of devices and the decision taken: risky requests (failed logins, far
    from home, at night, weak signal) are denied; a few decisions go against the rule."""
    hour = rng.uniform(0, 24, n)
    frame = pd.DataFrame(
        {
            "signal_dbm": rng.uniform(-100, -40, n),
            "battery_pct": rng.uniform(5, 100, n),
            "failed_login_rate": rng.exponential(0.8, n),
            "km_from_home": rng.exponential(20, n),
            "hour": hour,
        }
    ).round(4)
    night = (hour < 6) | (hour > 22)
    risk = (
        1.2 * frame["failed_login_rate"]
        + frame["km_from_home"] / 25
        + 1.0 * night
        + (frame["signal_dbm"] < -85) * 0.8
        + rng.normal(0, 0.3, n)
    )
    deny = risk > 2.2
    flipped = rng.random(n) < 0.03
    frame[DECISION] = np.where(deny ^ flipped, "deny", "approve")
    return frame


def write_decisions(root: Path, rng: np.random.Generator) -> DemoDataset:
    name = "demo-decisions"
    folder = root / "datasets" / name
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(decision_rows(600, rng), folder / "decisions.csv")
    _write_csv(decision_rows(200, rng), held_out_path(root, name))
    _write_spec(
        folder,
        "# A device's decision log: a classifier learns approve/deny from the signals.\n"
        "sources:\n  - path: decisions.csv\n"
        f"features: [{', '.join(DECISION_FEATURES)}]\n"
        f"label: {DECISION}\n"
        "model:\n  kind: random_forest\n  params: {n_estimators: 100, class_weight: balanced}\n"
        "min_samples: 100\n" + RETRAIN,
    )
    return DemoDataset(name, "classifier", held_out_path(root, name))


# -- drawings -----------------------------------------------------------------------------


def _images(folder: Path, prefix: str, ages: np.ndarray, make: Callable[[float], bytes]) -> list[tuple[str, float]]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, age in enumerate(ages):
        name = f"{prefix}-{i:04d}.png"
        (folder / name).write_bytes(make(float(age)))
        files.append((name, float(age)))
    return files


def write_drawings(
    root: Path, rng: np.random.Generator, per_group: int = 50, held_out_per_group: int = 20
) -> DemoDataset:
    """Needs Pillow (the embedder's dependency) to draw."""
    from oddity.cli import demo_drawings  # Pillow: only when drawings are asked for

    name = "demo-drawings"
    folder = root / "datasets" / name
    groups = list(itertools.pairwise(AGE_BOUNDS))

    def ages(count: int) -> np.ndarray:
        return np.concatenate([rng.integers(low, high, count) for low, high in groups]).astype(float)

    train = _images(folder / "images", "drawing", ages(per_group), lambda age: demo_drawings.drawing(age, rng))
    _write_csv(pd.DataFrame(train, columns=["file_name", "age"]), folder / "metadata.csv")
    held_folder = root / "demo" / f"{name}-held-out"
    normal = _images(held_folder, "normal", ages(held_out_per_group), lambda age: demo_drawings.drawing(age, rng))
    odd = _images(held_folder, "unusual", ages(held_out_per_group), lambda age: demo_drawings.unusual(rng, age))
    rows = [(f"{held_folder.name}/{f}", age, NORMAL) for f, age in normal]
    rows += [(f"{held_folder.name}/{f}", age, ANOMALOUS) for f, age in odd]
    _write_csv(pd.DataFrame(rows, columns=["file", "age", EXPECTED]), held_out_path(root, name))
    _write_spec(
        folder,
        "# Children's drawings with their age: one model per age group, on image embeddings.\n"
        "images: {path: images, metadata: metadata.csv, file_column: file_name}\n"
        "extra_features: [age]\n"
        f"routing: {{key: age, bounds: [{', '.join(map(str, AGE_BOUNDS))}], all_group: true}}\n"
        "embedder: {model: vit, batch_size: 32}\n"
        "min_samples: 40\n" + RETRAIN,
    )
    return DemoDataset(name, "images", held_out_path(root, name), embedder_model="vit")


# -- texts --------------------------------------------------------------------------------

SUBJECTS = ["My order", "The delivery", "My package", "The parcel", "Order 4471", "The courier", "My food"]
EVENTS = [
    "arrived twenty minutes late",
    "was left at the wrong door",
    "came with a missing item",
    "arrived cold",
    "was handed to my neighbour",
    "has not arrived yet",
    "came early, thank you",
    "was damaged on the way",
    "is stuck at the depot",
    "was delivered on time",
    "shows delivered but is not here",
    "came without the drinks",
]
ENDINGS = ["", ", can you refund the fee?", " and the driver was friendly", ", please check", ", again", "."]
OFF_TOPIC_SUBJECTS = [
    "The bread recipe",
    "The football match",
    "The stock market",
    "The volcano",
    "My guitar lesson",
    "The election",
    "The telescope",
    "Our yoga class",
]
OFF_TOPIC_EVENTS = [
    "needs two cups of flour",
    "ended in a draw after extra time",
    "fell three percent this morning",
    "erupted again last night",
    "covered minor chords",
    "results come out on Sunday",
    "shows the rings of Saturn",
    "starts at seven with stretching",
]


def support_messages(count: int, rng: np.random.Generator) -> list[str]:
    combos = list(itertools.product(SUBJECTS, EVENTS, ENDINGS))
    picked = rng.choice(len(combos), size=count, replace=False)
    return [f"{s} {e}{end}" for s, e, end in (combos[i] for i in picked)]


def off_topic_messages(count: int, rng: np.random.Generator) -> list[str]:
    combos = list(itertools.product(OFF_TOPIC_SUBJECTS, OFF_TOPIC_EVENTS))
    picked = rng.choice(len(combos), size=count, replace=False)
    return [f"{s} {e}" for s, e in (combos[i] for i in picked)]


def write_texts(root: Path, rng: np.random.Generator) -> DemoDataset:
    name = "demo-texts"
    folder = root / "datasets" / name
    folder.mkdir(parents=True, exist_ok=True)
    messages = support_messages(250, rng)
    _write_csv(pd.DataFrame({"text": messages[:200]}), folder / "messages.csv")
    held_out = pd.DataFrame(
        {
            "text": messages[200:] + off_topic_messages(50, rng),
            EXPECTED: [NORMAL] * 50 + [ANOMALOUS] * 50,
        }
    )
    _write_csv(held_out, held_out_path(root, name))
    _write_spec(
        folder,
        "# Delivery-support messages, embedded by the text model.\n"
        "texts: {path: messages.csv, text_column: text}\n"
        "embedder: {model: minilm, batch_size: 64}\n" + RETRAIN,
    )
    return DemoDataset(name, "texts", held_out_path(root, name), embedder_model="minilm")


# -- library ------------------------------------------------------------------------------

LIBRARY_PER_SUBJECT = 50  # 150 images: a library to search, group and tag, trained in seconds


def write_library(root: Path, rng: np.random.Generator) -> DemoDataset:
    """Needs Pillow (the embedder's dependency) to draw. Held out: one new image (file, its true tags)."""
    from oddity.cli import demo_library  # Pillow: only when the library is asked for

    name = "demo-library"
    folder = root / "datasets" / name
    seed = int(rng.integers(2**31))
    demo_library.generate_library(folder, per_subject=LIBRARY_PER_SUBJECT, seed=seed)
    new = demo_library.make_items(1, seed=seed + 1, subjects=(demo_library.SUBJECTS[0],), prefix="new")[0]
    held_folder = root / "demo" / f"{name}-held-out"
    held_folder.mkdir(parents=True, exist_ok=True)
    (held_folder / new.file_name).write_bytes(new.image)
    held_out = pd.DataFrame({"file": [f"{held_folder.name}/{new.file_name}"], "tags": [", ".join(new.tags)]})
    _write_csv(held_out, held_out_path(root, name))
    _write_spec(
        folder,
        "# A tagged image library: similar items, clusters and tag suggestions (oddity similar, clusters, tags).\n"
        "images: {path: images, metadata: metadata.csv, file_column: file_name}\n"
        "embedder: {model: vit, batch_size: 32}\n"
        "similarity: {id_column: id, tags_column: tags}\n"
        "min_samples: 40\n" + RETRAIN,
    )
    return DemoDataset(name, "library", held_out_path(root, name), embedder_model="vit")


def library_items(root: Path) -> pd.DataFrame:
    """The library's items as written (id, file_name, subject, tags), in the file's order."""
    from oddity.cli import demo_library

    return pd.read_csv(root / "datasets" / "demo-library" / demo_library.METADATA_FILE)


def tag_list(tags: str) -> tuple[str, ...]:
    """Tags as the library's files write them: comma-separated."""
    return tuple(t.strip() for t in tags.split(","))


WRITERS: dict[str, Callable[[Path, np.random.Generator], DemoDataset]] = {
    "demo-sensors": write_sensors,
    "demo-decisions": write_decisions,
    "demo-drawings": write_drawings,
    "demo-texts": write_texts,
    "demo-library": write_library,  # last: the others keep their seeds
}


def write(root: Path, name: str, seed: int) -> DemoDataset:
    """Write one demo dataset and its held-out file (each from its own seeded generator, so
    leaving one out changes none of the others)."""
    offset = list(WRITERS).index(name)
    return WRITERS[name](root, np.random.default_rng([seed, offset]))
