"""Export and serving parity: the ONNX path gives the embeddings transformers gives, and the
numpy/PIL preprocessing gives the pixels the model's own processor gives."""

import io

import numpy as np
import pytest
from PIL import Image

from oddity.embedder import export, graph_optimization
from oddity.embedder.export import ExportError, ensure_exported
from oddity.embedder.models import ModelSource, read_meta
from oddity.embedder.preprocessing import ImageLimits
from oddity.embedder.quantization import VARIANTS as quantization_variants
from oddity.embedder.runtime import EmbeddingModel, Item
from tests.support import encoders

# Parity tests compare the exported graph itself: ONNX Runtime fp32, no measured choice.
AS_EXPORTED = {"precision": "fp32", "backend": "onnxruntime"}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_images(seed=0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    shapes = [(64, 64), (48, 80), (120, 90), (33, 200)]
    return [png(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in shapes]


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return encoders.tiny_vit(tmp_path_factory.mktemp("vit"))


@pytest.mark.parametrize(
    "make", [encoders.tiny_vit, encoders.tiny_dinov2, encoders.tiny_clip_vision], ids=["vit", "dinov2", "clip"]
)
def test_image_embeddings_match_transformers(tmp_path, make):
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModel

    weights = make(tmp_path / "weights")
    folder = ensure_exported(ModelSource(model_id=str(weights), modality="image", **AS_EXPORTED), tmp_path / "cache")
    served = EmbeddingModel("m", folder, limits=ImageLimits())
    images = sample_images()
    got = served.embed([Item(image=i) for i in images])

    processor = AutoImageProcessor.from_pretrained(weights)
    clip = AutoConfig.from_pretrained(weights).model_type == "clip"
    model = (CLIPVisionModel if clip else AutoModel).from_pretrained(weights).eval()
    pil = [Image.open(io.BytesIO(i)).convert("RGB") for i in images]
    pixels = processor(images=pil, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(served.prepare([Item(image=i) for i in images])["pixel_values"], pixels, atol=2e-2)
    with torch.no_grad():
        expected = model(pixel_values=torch.from_numpy(pixels)).pooler_output.numpy()
    assert got.shape == expected.shape
    assert cosine(got, expected).min() >= 0.9999


@pytest.mark.slow
def test_text_embeddings_match_transformers_with_minilm(tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = ModelSource(model_id=encoders.minilm_path(), modality="text", **AS_EXPORTED)
    served = EmbeddingModel("text", ensure_exported(source, tmp_path / "cache"), limits=ImageLimits())
    texts = [
        "A child drew a house with a red roof.",
        "Sensor 4 reported a pressure spike.",
        "ok",
        "word " * 600,
    ]  # the last one is truncated to the model's 512 tokens
    got = served.embed([Item(text=t) for t in texts])
    assert got.shape == (4, 384)
    tokenizer = AutoTokenizer.from_pretrained(source.model_id)
    model = AutoModel.from_pretrained(source.model_id).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1).numpy()
    assert cosine(got, expected).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_export_is_cached_and_keyed_by_settings(tmp_path, vit):
    cache = tmp_path / "cache"
    fp32 = ensure_exported(ModelSource(model_id=str(vit), modality="image", precision="fp32"), cache)
    mtime = (fp32 / "model.onnx").stat().st_mtime_ns
    assert ensure_exported(ModelSource(model_id=str(vit), modality="image", precision="fp32"), cache) == fp32
    assert (fp32 / "model.onnx").stat().st_mtime_ns == mtime  # not exported again
    int8 = ensure_exported(ModelSource(model_id=str(vit), modality="image", precision="int8"), cache)
    assert int8 != fp32 and read_meta(int8)["precision"] == "int8" and (int8 / read_meta(int8)["graph"]).exists()
    images = [Item(image=i) for i in sample_images(1)]
    full = EmbeddingModel("f", fp32, limits=ImageLimits()).embed(images)
    quantized = EmbeddingModel("q", int8, limits=ImageLimits()).embed(images)
    assert cosine(full, quantized).min() > 0.98  # random weights quantize worse than trained ones
    assert not [p for p in cache.iterdir() if p.name.startswith(".export-")]


def test_unreachable_weights_say_how_to_provide_them_at_once(tmp_path):
    with pytest.raises(ExportError) as error:
        ensure_exported(ModelSource(model_id="no-such-org/no-such-model", modality="image"), tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("cannot load 'no-such-org/no-such-model': it is not in the local Hugging Face cache")
    assert '"model_id": "/path/to/local/dir", "modality": "image"' in message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("make", [encoders.tiny_vit, encoders.tiny_clip_vision], ids=["vit", "clip"])
def test_fused_attention_gives_the_embeddings_of_the_exported_graph(tmp_path, make):
    weights = make(tmp_path / "weights")
    cache = tmp_path / "cache"
    plain = ensure_exported(ModelSource(model_id=str(weights), modality="image", optimize=False, **AS_EXPORTED), cache)
    fused = ensure_exported(
        ModelSource(model_id=str(weights), modality="image", fuse_attention=True, **AS_EXPORTED), cache
    )
    meta = read_meta(fused)
    assert meta["optimization"]["applied"] and meta["optimization"]["fused"]["Attention"] == 2
    assert read_meta(plain)["optimization"]["reason"] == "optimize is off for this model"
    images = [Item(image=i) for i in sample_images(2)]
    expected = EmbeddingModel("p", plain, limits=ImageLimits()).embed(images)
    got = EmbeddingModel("f", fused, limits=ImageLimits()).embed(images)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_an_optimized_graph_that_differs_is_not_kept(tmp_path, vit):
    folder = ensure_exported(
        ModelSource(model_id=str(vit), modality="image", optimize=False, **AS_EXPORTED), tmp_path / "cache"
    )
    target = tmp_path / "fused.onnx"

    def outputs_of(path):  # the fused graph's embeddings come out 1% off
        rows = export._run(path, export.sample_inputs(folder, read_meta(folder)))
        return rows * 1.01 if path == target else rows

    outcome = graph_optimization.optimize(
        folder / "model.onnx", target, hf_model_type="vit", num_heads=2, hidden_size=32, outputs_of=outputs_of
    )
    assert not outcome.applied and outcome.fused
    assert outcome.reason.startswith("fused graph differs from the exported one")
    assert not target.exists()
    unknown = graph_optimization.optimize(
        folder / "model.onnx", target, hf_model_type="swin", num_heads=2, hidden_size=32, outputs_of=outputs_of
    )
    assert unknown.reason == "no fusion patterns for model type 'swin'"


@pytest.mark.slow
def test_int8_records_its_variant_and_cosine_and_fails_below_the_gate(tmp_path, vit):
    cache = tmp_path / "cache"
    int8 = ensure_exported(ModelSource(model_id=str(vit), modality="image", precision="int8"), cache)
    quantization = read_meta(int8)["quantization"]
    assert quantization["variant"] == "per-tensor" and quantization["min_cosine"] >= 0.998
    strict = ModelSource(model_id=str(vit), modality="image", precision="int8", min_cosine=1.0)
    with pytest.raises(ExportError) as error:
        ensure_exported(strict, cache)
    message = str(error.value)
    assert "int8 embeddings are too far from fp32 on the sample inputs" in message
    assert all(variant.name in message for variant in quantization_variants)
    assert "serve this model in fp32, or lower its min_cosine" in message
    assert "no candidate keeps cosine >= 1.0 to ONNX Runtime fp32" in message
    assert not (cache / strict.cache_key()).exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".export-")]


@pytest.mark.slow
def test_texts_of_mixed_lengths_embed_the_same_in_one_batch_as_alone(shared_encoders):
    served = EmbeddingModel("text", shared_encoders.exported("text"), limits=ImageLimits())
    rng = np.random.default_rng(0)
    words = ["red", "house", "pressure", "line", "spike", "child", "drew", "a", "the", "valve"]
    texts = [" ".join(rng.choice(words, int(rng.integers(1, 40)))) for _ in range(40)]
    together = served.embed([Item(text=t) for t in texts])
    alone = np.vstack([served.embed([Item(text=t)]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
