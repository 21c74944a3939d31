"""`oddity similar` shows what an item says: a text dataset's items carry their texts and an
image library's items their captions, each cut to its first 200 characters, in --json and as
the table's `text` column. The datasets are trained by a real trainer (embedded by a real
embedder: a tiny ViT and MiniLM) and served by a real detector."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from oddity.client import DetectorClient
from oddity.v1 import trainer_pb2
from tests.client.conftest import invoke, stdout_of
from tests.conftest import ServiceHandle, start_detector, start_trainer
from tests.support.waiting import wait_for
from tests.trainer.test_robustness import run_job

pytestmark = pytest.mark.slow  # datasets trained and served by real services

SHOWN = 200
LONG = "The parcel was left at the depot. " * 10  # 340 characters: cut to 200 when shown
NOTES = [f"Note {i}: the courier came {i} minutes late" for i in range(24)] + [LONG]
COLOURS = [(200, 40, 40), (40, 70, 200), (40, 150, 60)]


@dataclass
class Trained:
    detector: ServiceHandle
    captions: dict[str, str]  # id -> caption of the image library

    @property
    def target(self) -> str:
        return self.detector.server.target


def png(colour: tuple[int, int, int], rng: np.random.Generator) -> bytes:
    pixels = np.asarray(Image.new("RGB", (32, 32), colour), dtype=np.float32) + rng.normal(0, 8, (32, 32, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write(folder: Path, spec: dict, files: dict[str, bytes | pd.DataFrame]) -> None:
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, pd.DataFrame):
            content.to_csv(folder / name, index=False)
        else:
            (folder / name).write_bytes(content)
    (folder / "dataset.yaml").write_text(json.dumps(spec))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, embedder) -> Iterator[Trained]:
    """Model `notes` (texts, default row ids) and model `photos` (images with a caption column)."""
    root = tmp_path_factory.mktemp("similar-texts")
    data_volume, repository = root / "data", root / "models"
    repository.mkdir()
    manual = {"model": {"kind": "knn"}, "min_samples": 20, "retrain": {"policy": "manual"}}
    write(
        data_volume / "datasets" / "notes",
        {"texts": {"path": "notes.csv", "text_column": "note"}, "embedder": {"model": "text"}, **manual},
        {"notes.csv": pd.DataFrame({"note": NOTES})},
    )
    rng = np.random.default_rng(0)
    photos = {f"photo-{i}": (f"{i:02d}.png", COLOURS[i % 3]) for i in range(24)}
    captions = {item: f"a plain square, colour {colour}" for item, (_, colour) in photos.items()}
    captions["photo-0"] = "A long caption. " * 20  # 320 characters
    images: dict[str, bytes | pd.DataFrame] = {f"images/{f}": png(c, rng) for f, c in photos.values()}
    images["metadata.csv"] = pd.DataFrame(
        {"id": list(photos), "file": [f for f, _ in photos.values()], "caption": list(captions.values())}
    )
    write(
        data_volume / "datasets" / "photos",
        {
            "images": {"path": "images", "metadata": "metadata.csv", "file_column": "file"},
            "embedder": {"model": "vit"},
            "similarity": {"id_column": "id", "caption_column": "caption"},
            **manual,
        },
        images,
    )
    detector = start_detector(repository, embedder=embedder.server.target)
    trainer = start_trainer(data_volume, repository, embedder=embedder.server.target)
    try:
        for dataset in ("notes", "photos"):
            job = run_job(trainer, dataset)
            assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
        with DetectorClient(detector.server.target) as client:
            wait_for(
                lambda: {m.name for m in client.models() if m.serving_version} >= {"notes", "photos"},
                timeout=60,
                what="both models served",
            )
        yield Trained(detector, captions)
    finally:
        trainer.close()
        detector.close()


def similar(trained: Trained, *args: object) -> str:
    result = invoke(CliRunner(), "similar", *args, "--detector", trained.target)
    assert result.exit_code == 0, result.stderr
    return stdout_of(result)


def test_the_items_of_a_text_dataset_carry_their_texts(trained):
    items = json.loads(similar(trained, "notes", "--id", "1", "-k", len(NOTES), "--json"))["items"]
    # Default ids are the rows' numbers in the file (from 1).
    assert {item["id"]: item["text"] for item in items} == {str(i + 1): note[:SHOWN] for i, note in enumerate(NOTES)}
    assert len(LONG) > SHOWN


def test_the_items_of_an_image_library_carry_their_captions(trained):
    items = json.loads(similar(trained, "photos", "--id", "photo-1", "-k", 24, "--json"))["items"]
    assert {item["id"]: item["text"] for item in items} == {i: c[:SHOWN] for i, c in trained.captions.items()}


def test_the_table_has_a_text_column(trained):
    printed = similar(trained, "notes", "--id", "3", "-k", 1, "--exclude-self")
    header = next(line for line in printed.splitlines() if line.startswith("┃"))
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["rank", "id", "similarity", "cluster", "tags", "text"]
    with DetectorClient(trained.target) as client:
        nearest = client.similar("notes", item_id="3", top_k=1, exclude_self=True).items[0]
    assert nearest.text == NOTES[int(nearest.id) - 1][:SHOWN]
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in printed.splitlines() if line.startswith("│")]
    assert [(row[1], row[-1]) for row in rows] == [(nearest.id, nearest.text)]
