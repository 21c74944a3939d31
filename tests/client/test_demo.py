"""`oddity demo` end to end, offline, as real processes.

With `--start` it runs its own stack (a small local ViT for the drawings: no hub here), and
every figure of its table (`--json`) is computed again from the files it wrote: the held-out
files re-scored with the SDK against the stack it left running (`--keep-running`), ROC-AUC
with scikit-learn; the library's example (the nearest items to its first item, the clusters,
the tags suggested for a new image) is asked again through the SDK. Against a running
`oddity up` with no --model (embedder started on demand, its default image model not
loadable offline) every dataset trains on the small ViT that stack serves as vit, and a plain
restart of the stack serves the same vit, so the drawings' model still detects images."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from sklearn.metrics import roc_auc_score

from oddity.client import DetectorClient, DetectResult, Unavailable
from tests.client.conftest import start_up, with_text_model_exported
from tests.support.waiting import wait_for

# The whole demo as processes: a stack, four datasets trained and served (about a minute a test).
pytestmark = pytest.mark.slow

DEMO_SECONDS = 600


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "oddity.cli.main", "demo", "--json", *args]


def group_figures(dataset: str, truth: np.ndarray, result: DetectResult) -> dict[tuple[str, str], dict]:
    """Per group the detector used: what the demo should report, computed here."""
    figures = {}
    groups = np.array(result.groups)
    for group in sorted(set(result.groups)):
        rows = groups == group
        anomalous = truth[rows]
        scores = result.scores[rows]
        flagged = result.is_anomaly[rows]
        top = None
        if result.explanations:
            worst = result.explanations[int(np.flatnonzero(rows)[np.argmax(scores)])][0]
            top = f"{worst.name}:{worst.share:.2f}"
        figures[(dataset, group)] = {
            "version": result.version,
            "rows": int(rows.sum()),
            "normal": int((~anomalous).sum()),
            "anomalous": int(anomalous.sum()),
            "roc_auc": roc_auc_score(anomalous, scores),
            "flagged_normal": flagged[~anomalous].sum() / (~anomalous).sum(),
            "flagged_anomalous": flagged[anomalous].sum() / anomalous.sum(),
            "accuracy": None,
            "top_explanation": top,
        }
    return figures


def rescore(folder: Path, detector: str, datasets: set[str]) -> dict[tuple[str, str], dict]:
    """Score the held-out files the demo wrote, with the SDK, and compute the figures here."""
    held_out = folder / "demo"
    figures: dict[tuple[str, str], dict] = {}
    with DetectorClient(detector) as client:
        frame = pd.read_csv(held_out / "demo-sensors-held-out.csv")
        result = client.detect("demo-sensors", frame, explain_top_k=1)
        figures |= group_figures("demo-sensors", (frame["expected"] == "anomalous").to_numpy(), result)

        frame = pd.read_csv(held_out / "demo-decisions-held-out.csv")
        result = client.detect("demo-decisions", frame)
        deny = (frame["decision"] == "deny").to_numpy()
        predicted = np.array(result.predicted_classes)
        figures[("demo-decisions", "all")] = {
            "version": result.version,
            "rows": len(frame),
            "normal": int((~deny).sum()),
            "anomalous": int(deny.sum()),
            "roc_auc": roc_auc_score(deny, result.probabilities[:, result.class_labels.index("deny")]),
            "flagged_normal": (predicted[~deny] == "deny").sum() / (~deny).sum(),
            "flagged_anomalous": (predicted[deny] == "deny").sum() / deny.sum(),
            "accuracy": (predicted == frame["decision"].to_numpy()).sum() / len(frame),
            "top_explanation": None,
        }

        if "demo-drawings" in datasets:
            frame = pd.read_csv(held_out / "demo-drawings-held-out.csv")
            images = [(held_out / name).read_bytes() for name in frame["file"]]
            result = client.detect_images("demo-drawings", images, routing_values=frame["age"].tolist())
            figures |= group_figures("demo-drawings", (frame["expected"] == "anomalous").to_numpy(), result)

        frame = pd.read_csv(held_out / "demo-texts-held-out.csv")
        result = client.detect_images("demo-texts", texts=frame["text"].tolist())
        figures |= group_figures("demo-texts", (frame["expected"] == "anomalous").to_numpy(), result)
    return figures


def assert_figures_match(report: dict, expected: dict[tuple[str, str], dict]) -> None:
    reported = {(r["dataset"], r["group"]): r for r in report["results"]}
    assert sorted(reported) == sorted(expected)
    for key, figures in expected.items():
        row = reported[key]
        assert row["model"] == key[0]
        for name in ("version", "rows", "normal", "anomalous", "top_explanation"):
            assert row[name] == figures[name], (key, name)
        for name in ("roc_auc", "flagged_normal", "flagged_anomalous", "accuracy"):
            assert row[name] == pytest.approx(figures[name], abs=1e-12), (key, name)


def assert_library_example_matches(folder: Path, detector: str, library: dict) -> None:
    """The demo's library example is what the SDK answers for its first item and its new image."""
    items = pd.read_csv(folder / "datasets" / "demo-library" / "metadata.csv")
    held_out = pd.read_csv(folder / "demo" / "demo-library-held-out.csv")
    assert len(items) == 150
    first, image = str(items["id"][0]), folder.resolve() / "demo" / held_out["file"][0]
    with DetectorClient(detector) as client:
        similar = client.similar("demo-library", item_id=first, top_k=5, exclude_self=True)
        clusters = client.clusters("demo-library", representatives=3)
        suggested = client.suggest_tags("demo-library", image=image, top_k=3)
    assert library == {
        "model": "demo-library",
        "version": 1,
        "similar": {"id": first, "tags": items["tags"][0].split(", "), **similar.to_dict()},
        "clusters": clusters.to_dict(),
        "tags": {"image": str(image), "true_tags": held_out["tags"][0].split(", "), **suggested.to_dict()},
    }
    assert len(similar.items) == 5 and first not in similar.ids
    assert sum(c.size for c in clusters.clusters) + clusters.unclustered == 150
    assert suggested.tags[0] == "face"  # the new image is a face


def read_json_document(stream, lines: list[str]) -> dict:
    """The first JSON document on `stream` (the demo keeps running after printing it)."""
    for line in stream:
        lines.append(line)
        if line.rstrip("\n") == "}":
            return json.loads("".join(lines))
    raise AssertionError("the demo printed no JSON document:\n" + "".join(lines))


def test_demo_with_its_own_stack_reports_figures_that_the_written_files_reproduce(tmp_path, shared_encoders):
    folder = with_text_model_exported(tmp_path / "demo", shared_encoders)
    proc = subprocess.Popen(
        demo_command("--start", "--keep-running", "--data-volume", str(folder)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True).start()
    try:
        stdout: list[str] = []
        document: dict = {}
        reader = threading.Thread(target=lambda: document.update(read_json_document(proc.stdout, stdout)))
        reader.start()
        reader.join(timeout=DEMO_SECONDS)
        assert document, "".join(stderr)
        children = psutil.Process(proc.pid).children(recursive=True)
        modules = sorted(c.cmdline()[c.cmdline().index("-m") + 1] for c in children)
        assert modules == ["oddity.detector.main", "oddity.embedder.main", "oddity.trainer.main"]

        assert document["started_stack"] is True
        assert document["failed"] == {}
        assert document["skipped"] == {}
        assert document["data_volume"] == str(folder.resolve())
        assert document["image_model"] == str(folder.resolve() / "demo" / "small-vit")
        assert sorted(document["metrics"]) == ["detector", "embedder", "trainer"]
        expected = rescore(folder, document["targets"]["detector"], {"demo-drawings"})
        assert sorted(expected) == [
            ("demo-decisions", "all"),
            ("demo-drawings", "age_3_6"),
            ("demo-drawings", "age_6_9"),
            ("demo-drawings", "age_9_12"),
            ("demo-sensors", "all"),
            ("demo-texts", "all"),
        ]
        assert_figures_match(document, expected)
        assert_library_example_matches(folder, document["targets"]["detector"], document["library"])
        for row in document["results"]:  # the sample data are made to be told apart
            assert row["roc_auc"] > 0.9, row
        for name in ("demo-sensors", "demo-decisions", "demo-drawings", "demo-texts"):
            assert (folder / "datasets" / name / "dataset.yaml").is_file()
            assert (folder / "demo" / f"{name}-scored.csv").is_file()
        assert (folder / "datasets" / "demo-library" / "dataset.yaml").is_file()
        assert document["seconds"] < DEMO_SECONDS
        # The demo asks each model only for what it answers: no refused Detect in the detector.
        with urllib.request.urlopen(document["metrics"]["detector"], timeout=10) as response:
            refused = [
                line
                for line in response.read().decode().splitlines()
                if line.startswith("oddity_grpc_requests_total")
                and 'code="OK"' not in line
                and not line.endswith(" 0.0")
            ]
        assert refused == []

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert [c.pid for c in children if c.is_running()] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_demo_on_the_readme_stack_offline_trains_every_dataset_and_a_restart_keeps_serving_images(
    tmp_path, shared_encoders
):
    """`oddity up` with no --model (its default vit a hub id not loadable here), then `oddity demo`:
    the stack serves the small local ViT as vit, so every dataset trains and scores; a plain
    restart serves the same vit (stack.json), so the drawings' model still detects images."""
    up = start_up(with_text_model_exported(tmp_path / "stack", shared_encoders))  # embedder: once a dataset needs it
    small_vit = up.folder.resolve() / "demo" / "small-vit"
    try:
        wait_for(lambda: "Oddity is up" in up.stderr_text(), timeout=120, what="the welcome panel")
        panel = " ".join(up.stderr_text().replace("│", " ").split())
        assert f"embedder models: vit={small_vit} (a small local ViT, random weights: " in panel
        embedder = re.search(r"embedder\s+(127\.0\.0\.1:\d+)\s+starts when", up.stderr_text()).group(1)
        detector, trainer = up.target("detector"), up.target("trainer")
        run = subprocess.run(
            demo_command(
                "--data-volume", str(up.folder), "--detector", detector, "--trainer", trainer, "--embedder", embedder
            ),
            capture_output=True,
            text=True,
            timeout=DEMO_SECONDS,
        )
        assert run.returncode == 0, run.stderr
        document = json.loads(run.stdout)
        assert document["started_stack"] is False
        assert document["failed"] == {}
        assert document["skipped"] == {}
        assert document["image_model"] == str(small_vit)
        assert f"the drawings and the library use the stack's vit ({small_vit})" in run.stderr
        expected = rescore(up.folder, detector, {"demo-drawings"})
        assert sorted({dataset for dataset, _ in expected}) == [
            "demo-decisions",
            "demo-drawings",
            "demo-sensors",
            "demo-texts",
        ]
        assert_figures_match(document, expected)
        assert_library_example_matches(up.folder, detector, document["library"])
        stack_output = up.stderr_text()
        assert "starting the embedder: dataset 'demo-texts' has images or texts" in stack_output
        assert "cannot load model 'vit'" not in stack_output
        assert json.loads((up.folder / "stack.json").read_text()) == {
            "models": [{"name": "vit", "model_id": str(small_vit), "modality": "image"}]
        }
        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(timeout=60) == 0
    finally:
        up.kill()

    again = start_up(tmp_path / "stack")  # no --model: vit is the remembered small ViT
    try:
        wait_for(lambda: "Oddity is up" in again.stderr_text(), timeout=120, what="the welcome panel")
        assert f"embedder models: vit={small_vit} (remembered from stack.json)" in " ".join(
            again.stderr_text().replace("│", " ").split()
        )
        held_out = again.folder / "demo"
        frame = pd.read_csv(held_out / "demo-drawings-held-out.csv")
        images = [(held_out / name).read_bytes() for name in frame["file"]]
        with DetectorClient(again.target("detector")) as client:
            wait_for(
                lambda: any(m.name == "demo-drawings" and m.serving_version for m in client.models()),
                timeout=120,
                what="demo-drawings serving",
            )
            result = wait_for(  # once the embedder has loaded vit again
                lambda: _detect_images_when_loaded(client, images, frame["age"].tolist()),
                timeout=180,
                what="demo-drawings detecting images",
            )
        assert len(result.scores) == len(frame)
        again.proc.send_signal(signal.SIGTERM)
        assert again.proc.wait(timeout=60) == 0
    finally:
        again.kill()


def _detect_images_when_loaded(client: DetectorClient, images: list[bytes], ages: list) -> DetectResult | None:
    try:
        return client.detect_images("demo-drawings", images, routing_values=ages)
    except Unavailable:  # the embedder is still starting or loading vit
        return None
