"""`oddity embed` and `oddity detect-images` against a real embedder (a tiny ViT exported to
ONNX, the default model) and a detector serving a model over its vectors plus the child's age: the vectors and
scores are those of Embed and DetectImages on the same files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from oddity.client import EmbedderClient
from oddity.v1 import detector_pb2, embedder_pb2
from tests.client.conftest import invoke, usage_error
from tests.conftest import start_detector
from tests.support import drawings, models

pytestmark = pytest.mark.slow  # a scenario through real services; `-m "not slow"` leaves it out


@pytest.fixture(scope="module")
def stack(tmp_path_factory, embedder):
    root = tmp_path_factory.mktemp("embedding-cli")
    detector = None
    try:
        repository = root / "models"
        repository.mkdir()
        served = embedder.stub.GetInfo(embedder_pb2.GetInfoRequest(model="vit")).models[0]
        models.publish_image_model(repository, served)
        detector = start_detector(repository, embedder=embedder.server.target)
        rng = np.random.default_rng(0)
        files = []
        for i, age in enumerate((4.0, 8.0, 11.0)):
            path = root / f"drawing-{i}.png"
            path.write_bytes(drawings.drawing(age, rng))
            files.append(path)
        yield embedder, detector, files
    finally:
        if detector is not None:
            detector.close()


def test_embed_prints_the_vectors_of_embed(cli, stack):
    embedder, _, files = stack
    expected = embedder.stub.Embed(
        embedder_pb2.EmbedRequest(model="vit", items=[embedder_pb2.EmbedItem(image=f.read_bytes()) for f in files])
    )
    want = np.frombuffer(expected.embeddings.raw_data, "<f4").reshape(len(files), -1)

    result = invoke(cli, "embed", *files, "--model", "vit", "--json", "--embedder", embedder.server.target)
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["model"], printed["dimension"]) == ("vit", want.shape[1])
    assert [item["file"] for item in printed["items"]] == [str(f) for f in files]
    assert np.array([item["vector"] for item in printed["items"]], np.float32).tolist() == want.tolist()

    people = invoke(cli, "embed", *files, "--embedder", embedder.server.target)  # the default model
    assert people.exit_code == 0, people.stderr
    assert [line.split()[1] for line in people.stdout.splitlines() if "drawing-" in line] == [f.name for f in files]

    with EmbedderClient(embedder.server.target) as sdk:
        assert sdk.embed(images=files).tolist() == want.tolist()
        assert [(m.name, m.modality, m.dimension) for m in sdk.models("vit")] == [("vit", "image", want.shape[1])]


def test_embed_sends_texts_to_the_text_model(cli, embedder, tmp_path):
    """The embedder's default is the image model: .txt files go to its text model instead."""
    texts = ["a red kite over the hill", "a quarterly sensor report"]
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"note-{i}.txt")
        files[-1].write_text(text + "\n")
    expected = embedder.stub.Embed(
        embedder_pb2.EmbedRequest(model="text", items=[embedder_pb2.EmbedItem(text=t) for t in texts])
    )
    want = np.frombuffer(expected.embeddings.raw_data, "<f4").reshape(len(texts), -1)

    result = invoke(cli, "embed", *files, "--json", "--embedder", embedder.server.target)
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["model"], printed["dimension"]) == ("text", want.shape[1])
    assert np.array([item["vector"] for item in printed["items"]], np.float32).tolist() == want.tolist()


def test_detect_images_scores_as_detect_images_does(cli, stack):
    _, detector, files = stack
    images = [f.read_bytes() for f in files]
    for ages in ([7.0], [4.0, 8.0, 11.0]):
        expected = detector.stub.DetectImages(
            detector_pb2.DetectImagesRequest(model="pictures", images=images, routing_values=ages), timeout=60
        ).result
        flags = [arg for age in ages for arg in ("--age", age)]
        result = invoke(
            cli, "detect-images", "--model", "pictures", *flags, *files, "--json", "--detector", detector.server.target
        )
        assert result.exit_code == 0, result.stderr
        printed = json.loads(result.stdout)
        assert (printed["model"], printed["version"]) == ("pictures", 1)
        assert [i["file"] for i in printed["items"]] == [str(f) for f in files]
        assert [i["score"] for i in printed["items"]] == list(expected.scores)
        assert [i["is_anomaly"] for i in printed["items"]] == list(expected.is_anomaly)
        assert [i["group"] for i in printed["items"]] == list(expected.groups)

    people = invoke(
        cli, "detect-images", "-m", "pictures", "--routing-value", 6, *files, "--detector", detector.server.target
    )
    assert people.exit_code == 0, people.stderr
    assert "pictures v1" in people.stdout and "drawing-2.png" in people.stdout


def test_files_and_routing_values_that_do_not_fit_are_usage_errors(cli, stack, tmp_path):
    _, detector, files = stack
    note = tmp_path / "note.txt"
    note.write_text("a house and a sun")
    mixed = invoke(cli, "detect-images", "-m", "pictures", files[0], note, "--detector", detector.server.target)
    assert mixed.exit_code == 2
    assert "give images or .txt files, not both at once" in usage_error(mixed)
    counted = invoke(
        cli, "detect-images", "-m", "pictures", "--age", 3, "--age", 4, *files, "--detector", detector.server.target
    )
    assert counted.exit_code == 2
    assert "give one routing value, or one per file (3); got 2" in usage_error(counted)
    csv = tmp_path / "rows.csv"
    csv.write_text("a\n1\n")
    assert invoke(cli, "embed", csv, "--embedder", "127.0.0.1:1").exit_code == 2


def test_a_model_on_an_encoder_the_embedder_does_not_serve_says_which_oddity_up_serves_it(cli, embedder, tmp_path):
    """Trained on google/vit-base-patch16-224 as `vit`, served by an embedder whose `vit` is
    another ViT: `oddity models` lists the problem, and DetectImages' refusal names the same
    `oddity up --model` that restores it."""
    repository = tmp_path / "models"
    repository.mkdir()
    served = embedder.stub.GetInfo(embedder_pb2.GetInfoRequest(model="vit")).models[0]
    other = embedder_pb2.ModelInfo()
    other.CopyFrom(served)
    other.model_id = "google/vit-base-patch16-224"
    models.publish_image_model(repository, other)
    detector = start_detector(repository, embedder=embedder.server.target)
    try:
        target = ("--detector", detector.server.target, "--embedder", embedder.server.target)
        listed = invoke(cli, "models", "--json", *target)
        assert listed.exit_code == 0, listed.stderr
        (pictures,) = json.loads(listed.stdout)
        restore = "`oddity up --model vit=google/vit-base-patch16-224` serves it"
        assert pictures["encoder_problem"] == (
            f"the embedder does not serve vit = google/vit-base-patch16-224; {restore}"
        )
        image = tmp_path / "drawing.png"
        image.write_bytes(drawings.drawing(5.0, np.random.default_rng(0)))
        scored = invoke(cli, "detect-images", image, "--model", "pictures", "--age", 5, *target[:2])
        assert scored.exit_code == 1
        assert scored.stderr.rstrip().endswith(
            f"the embedder serves {served.model_id} (revision {served.revision}, {served.dimension} values); "
            "`oddity up --model vit=google/vit-base-patch16-224` serves the weights it needs"
        )
    finally:
        detector.close()
