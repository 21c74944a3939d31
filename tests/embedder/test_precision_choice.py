"""The runtime and precision chosen per CPU at export: measured, recorded, gated, forceable."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from oddity.common.settings import load_settings
from oddity.embedder.export import ExportError, ensure_exported
from oddity.embedder.models import ModelSource, read_meta
from oddity.embedder.precision_choice import NoCandidateKept, candidates
from oddity.embedder.settings import EmbedderSettings
from oddity.v1 import embedder_pb2
from tests.conftest import start_embedder
from tests.support import encoders
from tests.support.servers import wait_models


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return encoders.tiny_vit(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.slow
def test_the_fastest_candidate_keeping_the_gate_is_chosen_and_recorded(vit, cache):
    folder = ensure_exported(ModelSource(model_id=str(vit), modality="image"), cache)
    meta = read_meta(folder)
    choice = meta["choice"]
    names = [c["name"] for c in choice["candidates"]]
    assert {"onnxruntime fp32", "onnxruntime int8 static", "openvino fp32", "openvino int8 static"} <= set(names)
    assert "onnxruntime int8 dynamic" not in names  # its vectors depend on the batch
    gated = [c for c in choice["candidates"] if c["cosine"] is not None and c["cosine"] >= 0.998]
    fastest = max(gated, key=lambda c: c["items_per_second"])
    assert choice["chosen"] == fastest["name"] and fastest["outcome"] == "chosen"
    assert (meta["backend"], meta["precision"], meta["graph"]) == (
        fastest["backend"],
        fastest["precision"],
        fastest["graph"],
    )
    assert [p.name for p in folder.glob("*.onnx")] == [meta["graph"]]  # graphs not chosen are gone
    assert choice["setting"] == {"backend": "auto", "precision": "auto"} and choice["cpu"]


@pytest.mark.slow
def test_a_forced_backend_and_precision_are_the_only_candidate(vit, cache):
    folder = ensure_exported(
        ModelSource(model_id=str(vit), modality="image", backend="openvino", precision="fp32"), cache
    )
    meta = read_meta(folder)
    assert [c["name"] for c in meta["choice"]["candidates"]] == ["openvino fp32"]
    assert (meta["backend"], meta["precision"], meta["graph"]) == ("openvino", "fp32", "model.onnx")


@pytest.mark.slow
def test_the_cosine_gate_rejects_int8_below_it(vit, cache):
    folder = ensure_exported(ModelSource(model_id=str(vit), modality="image", min_cosine=0.99999), cache)
    candidates = {c["name"]: c for c in read_meta(folder)["choice"]["candidates"]}
    assert candidates["onnxruntime int8 static"]["outcome"] == "below the cosine gate"
    assert candidates["openvino int8 static"]["outcome"] == "below the cosine gate"
    assert read_meta(folder)["precision"] == "fp32"


@pytest.mark.slow
def test_bf16_forced_where_it_cannot_run_fails_the_export_saying_why(vit, cache):
    with pytest.raises(ExportError, match="no candidate runs backend 'onnxruntime' in precision 'bf16'"):
        ensure_exported(
            ModelSource(model_id=str(vit), modality="image", backend="onnxruntime", precision="bf16"), cache
        )


def test_without_openvino_auto_measures_onnxruntime_only_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what `import openvino` meets where it is not installed
    allowed, notes = candidates(ModelSource(model_id="/weights/vit", modality="image"))
    assert [c.name for c in allowed] == ["onnxruntime fp32", "onnxruntime int8 static"]
    assert notes == ["openvino is not installed: ONNX Runtime candidates only (pip install openvino)"]
    with pytest.raises(NoCandidateKept, match="no candidate runs backend 'openvino' in precision 'auto'"):
        candidates(ModelSource(model_id="/weights/vit", modality="image", backend="openvino"))


def test_dynamic_int8_whose_vectors_depend_on_the_batch_is_a_candidate_only_when_int8_is_forced():
    onnxruntime = {"model_id": "/weights/vit", "modality": "image", "backend": "onnxruntime"}
    auto, _ = candidates(ModelSource(**onnxruntime))
    forced, _ = candidates(ModelSource(**onnxruntime, precision="int8"))
    assert [c.name for c in auto] == ["onnxruntime fp32", "onnxruntime int8 static"]
    assert [c.name for c in forced] == ["onnxruntime int8 dynamic", "onnxruntime int8 static"]


def test_precision_and_backend_flags_apply_to_models_that_set_none():
    models = {
        "images": {"model_id": "/weights/vit", "modality": "image"},
        "texts": {"model_id": "/weights/minilm", "modality": "text", "precision": "fp32"},
    }
    settings = load_settings(
        EmbedderSettings,
        ["--models", json.dumps(models), "--default-model", "images", "--precision", "int8", "--backend", "openvino"],
    )
    assert (settings.models["images"].precision, settings.models["images"].backend) == ("int8", "openvino")
    assert (settings.models["texts"].precision, settings.models["texts"].backend) == ("fp32", "openvino")


@pytest.mark.slow
def test_openvino_answers_as_onnxruntime_fp32_does_over_grpc(vit, tmp_path):
    models = {
        "onnxruntime": ModelSource(model_id=str(vit), modality="image", backend="onnxruntime", precision="fp32"),
        "openvino": ModelSource(model_id=str(vit), modality="image", backend="openvino"),
    }
    handle = start_embedder(tmp_path / "cache", models)
    try:
        wait_models(handle)
        assert handle.service.models["openvino"].model.meta["backend"] == "openvino"
        rng = np.random.default_rng(0)
        images = []
        for _ in range(6):
            image = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((80, 60))
            images.append(png(image))

        def embed(model: str) -> np.ndarray:
            request = embedder_pb2.EmbedRequest(model=model, items=[embedder_pb2.EmbedItem(image=i) for i in images])
            response = handle.stub.Embed(request)
            return np.frombuffer(response.embeddings.raw_data, "<f4").reshape(list(response.embeddings.shape))

        reference, got = embed("onnxruntime"), embed("openvino")
        cosine = (reference * got).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(got, axis=1)
        assert got.shape == reference.shape and cosine.min() >= 0.998
    finally:
        handle.close()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


_NO_TELEMETRY = """
import sys
started = []
processes = {"os.fork", "os.posix_spawn", "subprocess.Popen"}
sys.addaudithook(lambda event, args: started.append(event) if event in processes else None)
import numpy as np
from pathlib import Path
from oddity.embedder.backends import OpenVinoBackend
from oddity.embedder.session_options import SessionConfig
embedding = OpenVinoBackend(Path(sys.argv[1]), "fp32", SessionConfig())({"x": np.ones((1, 4), np.float32)})
import time; time.sleep(1.0)  # telemetry is sent from a thread
print(started, sys.modules.get("openvino_telemetry") is None, float(embedding.sum()))
"""


def test_openvino_serves_without_starting_a_telemetry_process(tmp_path):
    """OpenVINO's usage telemetry forks a process that sends data to Intel's analytics when a
    graph is read (outside CI): a server does neither."""
    graph = helper.make_model(
        helper.make_graph(
            [helper.make_node("Relu", ["x"], ["embedding"])],
            "relu",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, 4])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "model.onnx"
    onnx.save(graph, path)
    environment = {k: v for k, v in os.environ.items() if k not in {"CI", "TF_BUILD", "JENKINS_URL"}}
    environment["HOME"] = str(tmp_path)  # where OpenVINO looks for the user's telemetry consent
    ran = subprocess.run(
        [sys.executable, "-c", _NO_TELEMETRY, str(path)], env=environment, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["[]", "True", "4.0"]
