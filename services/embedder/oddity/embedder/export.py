"""Exporting Hugging Face encoders to ONNX, once per (model, revision, settings).

This is the only module of the embedder that needs torch and transformers; serving needs
onnxruntime, tokenizers and Pillow only. Loading goes through transformers'
`from_pretrained`, so a hub id and a local directory work alike; on a machine without hub
access a hub id fails, and the error says how to provide the weights.

After the export, ONNX Runtime's transformer optimizer fuses the graph where its outputs
stay the same (graph_optimization.py), and the serving runtime and precision are chosen by
measuring them behind a cosine gate against fp32 (precision_choice.py); both are checked on
sample inputs made here.

Reason to change: how Hugging Face models become ONNX graphs.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oddity.common import bundle
from oddity.embedder.models import META_FILE, ModelSource, read_meta, write_meta


class ExportError(Exception):
    """The model cannot be loaded or exported; the message says what to do."""


@dataclass(frozen=True)
class Architecture:
    """What the transformer optimizer needs to know about an exported encoder."""

    model_type: str
    num_heads: int
    hidden_size: int


HUB_PROBE_SECONDS = 5.0  # one look at the hub before a download that would retry for a minute


def ensure_exported(source: ModelSource, cache_dir: Path) -> Path:
    """The folder holding model.onnx and meta.json for this source, exporting on first use.
    Exports are written to a temporary folder and renamed, so a crash leaves no half cache."""
    folder = cache_dir / source.cache_key()
    if (folder / META_FILE).exists():
        return folder
    try:
        import torch  # noqa: F401  # the export extra; serving installs do not carry it
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            f"{source.model_id!r} is not in the export cache {cache_dir} and this install cannot export it "
            f"({exc.name} missing): run oddity-embedder-export with the same settings, or install "
            "oddity-embedder[export]"
        ) from exc
    if not source.is_local:
        _check_fetchable(source)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=cache_dir))
    except OSError as exc:
        raise ExportError(f"cannot write the export cache {cache_dir}: {exc}") from exc
    try:
        export = _export_image if source.modality == "image" else _export_text
        architecture = export(source, staging)
        _optimize_and_choose(source, staging, architecture)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / META_FILE).exists():  # not another exporter winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def _check_fetchable(source: ModelSource) -> None:
    """A hub model that is neither cached nor reachable fails at once, in one line saying what
    to do, instead of after a minute of download retries."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(source.model_id, revision=source.revision, local_files_only=True)
        return  # cached: no network needed
    except LocalEntryNotFoundError:
        pass
    except Exception:  # an unknown id, a broken cache entry: let the loaders say what is wrong
        return
    reason = "HF_HUB_OFFLINE is set"
    if not os.environ.get("HF_HUB_OFFLINE"):
        try:
            HfApi().model_info(source.model_id, revision=source.revision, timeout=HUB_PROBE_SECONDS)
            return
        except Exception as exc:
            reason = f"the Hugging Face hub is not reachable ({type(exc).__name__})"
    raise ExportError(
        f"cannot load {source.model_id!r}: it is not in the local Hugging Face cache and {reason}; give a local "
        f"directory of its weights (save_pretrained) as its model_id, e.g. --models "
        f'\'{{"<name>": {{"model_id": "/path/to/local/dir", "modality": "{source.modality}"}}}}\''
    )


def _load(loader, source: ModelSource, what: str, **kwargs):
    try:
        return loader(source.model_id, revision=None if source.is_local else source.revision, **kwargs)
    except Exception as exc:
        raise ExportError(
            f"cannot load the {what} of {source.model_id!r} (revision {source.revision}): {exc}. "
            "Provide the weights as a local directory (save_pretrained) in the model's model_id, "
            "or run where the Hugging Face hub is reachable."
        ) from exc


def _onnx_export(module, args, path: Path, input_names: list[str], dynamic_axes: dict) -> None:
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(
            module,
            args,
            buffer,  # type: ignore[arg-type]  # torch writes to file objects too
            input_names=input_names,
            output_names=["embedding"],
            dynamic_axes={**dynamic_axes, "embedding": {0: "batch"}},
            opset_version=bundle.OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.ir_version = bundle.IR_VERSION
    onnx.save(model, path)


def _library_logs_as_ours() -> None:
    """transformers and the hub print to stderr with handlers and progress bars of their own:
    send their records through the root logger (one JSON line each) and drop the bars."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()
    disable_progress_bars()


def _export_image(source: ModelSource, folder: Path) -> Architecture:
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModel

    _library_logs_as_ours()

    config = _load(AutoConfig.from_pretrained, source, "config")
    processor = _load(AutoImageProcessor.from_pretrained, source, "image processor")
    loader = CLIPVisionModel.from_pretrained if config.model_type == "clip" else AutoModel.from_pretrained
    # Eager attention exports as plain MatMul/Softmax, which the transformer optimizer fuses.
    model = _load(loader, source, "weights", attn_implementation="eager").eval()
    preprocessing = image_preprocessing(processor)

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            outputs = self.model(pixel_values=pixel_values)
            pooled = getattr(outputs, "pooler_output", None)
            # CLS token where the model has no pooler.
            return pooled if pooled is not None else outputs.last_hidden_state[:, 0]

    encoder = Encoder().eval()
    height, width = preprocessing["input_height"], preprocessing["input_width"]
    dummy = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        dimension = int(encoder(dummy).shape[-1])
    _onnx_export(encoder, (dummy,), folder / "model.onnx", ["pixel_values"], {"pixel_values": {0: "batch"}})
    write_meta(
        folder,
        {
            **_common_meta(source, dimension),
            "preprocessing": preprocessing,
            "pooling": "pooler_output or CLS token",
        },
    )
    return _architecture(getattr(config, "vision_config", None) or config, config.model_type)


def image_preprocessing(processor) -> dict:
    """The processor's steps as plain numbers, so serving can repeat them with PIL + numpy."""
    size = dict(getattr(processor, "size", None) or {})
    crop = dict(getattr(processor, "crop_size", None) or {}) if getattr(processor, "do_center_crop", False) else {}
    if "height" in size:
        resize = {"height": int(size["height"]), "width": int(size["width"])}
    elif "shortest_edge" in size:
        resize = {"shortest_edge": int(size["shortest_edge"])}
    else:
        raise ExportError(f"unsupported image processor size {size}")
    if crop:
        height, width = int(crop["height"]), int(crop["width"])
    elif "height" in resize:
        height, width = resize["height"], resize["width"]
    else:
        raise ExportError("a shortest_edge resize needs a center crop to fix the input size")
    resample = getattr(processor, "resample", 2)
    return {
        "resize": resize,
        "crop": {"height": height, "width": width} if crop else None,
        "resample": int(resample.value if hasattr(resample, "value") else resample),
        "rescale_factor": float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0,
        "mean": [float(v) for v in processor.image_mean] if getattr(processor, "do_normalize", True) else None,
        "std": [float(v) for v in processor.image_std] if getattr(processor, "do_normalize", True) else None,
        "input_height": height,
        "input_width": width,
    }


def _export_text(source: ModelSource, folder: Path) -> Architecture:
    import torch
    from transformers import AutoModel, AutoTokenizer

    _library_logs_as_ours()

    tokenizer = _load(AutoTokenizer.from_pretrained, source, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{source.model_id!r} has no fast tokenizer (tokenizer.json); serving needs one")
    model = _load(AutoModel.from_pretrained, source, "weights", attn_implementation="eager").eval()
    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]

    class Encoder(torch.nn.Module):
        """Mean pooling over the attention mask, then L2 normalization (sentence embeddings)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            named = dict(zip(input_names, inputs, strict=True))
            hidden = self.model(**named).last_hidden_state
            mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    encoder = Encoder().eval()
    sample = tokenizer(["an example sentence"], return_tensors="pt")
    args = tuple(sample[n] for n in input_names)
    with torch.no_grad():
        dimension = int(encoder(*args).shape[-1])
    axes = {n: {0: "batch", 1: "tokens"} for n in input_names}
    _onnx_export(encoder, args, folder / "model.onnx", input_names, axes)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    max_length = source.max_length or min(int(tokenizer.model_max_length), 512)
    write_meta(
        folder,
        {
            **_common_meta(source, dimension),
            "preprocessing": {
                "max_length": max_length,
                "inputs": input_names,
                "pad_id": int(tokenizer.pad_token_id or 0),
            },
            "pooling": "mean over attention mask, L2-normalized",
        },
    )
    return _architecture(model.config, model.config.model_type)


def _architecture(config, model_type: str) -> Architecture:
    return Architecture(
        model_type, int(getattr(config, "num_attention_heads", 0)), int(getattr(config, "hidden_size", 0))
    )


def _common_meta(source: ModelSource, dimension: int) -> dict:
    return {
        "model_id": source.model_id,
        "revision": "local" if source.is_local else source.revision,
        "modality": source.modality,
        "dimension": dimension,
        "graph": "model.onnx",
    }


def _optimize_and_choose(source: ModelSource, folder: Path, architecture: Architecture) -> None:
    """Fuse model.onnx in place where it pays and stays equal; then choose the runtime and
    precision by measuring them here, behind the cosine gate. The outcome of each step is
    recorded in meta.json."""
    from oddity.embedder.graph_optimization import Optimization, optimize
    from oddity.embedder.precision_choice import NoCandidateKept, choose

    meta = read_meta(folder)
    inputs = sample_inputs(folder, meta)
    graph = folder / "model.onnx"

    def outputs_of(path: Path) -> np.ndarray:
        return _run(path, inputs)

    if source.optimize:
        fused = folder / "model.fused.onnx"
        outcome = optimize(
            graph,
            fused,
            hf_model_type=architecture.model_type,
            num_heads=architecture.num_heads,
            hidden_size=architecture.hidden_size,
            outputs_of=outputs_of,
            attention=source.fuse_attention,
        )
        if outcome.applied:
            fused.replace(graph)
    else:
        outcome = Optimization(False, reason="optimize is off for this model")
    meta["optimization"] = outcome.as_meta()
    try:
        choice = choose(folder, source, inputs, sample_inputs(folder, meta, calibration=True))
    except NoCandidateKept as exc:
        raise ExportError(f"{source.model_id!r}: {exc}") from exc
    meta["graph"] = choice.chosen.graph
    meta["backend"] = choice.chosen.backend
    meta["precision"] = choice.chosen.precision
    meta["choice"] = choice.as_meta()
    if choice.quantization is not None:
        meta["quantization"] = choice.quantization
    write_meta(folder, meta)


def sample_inputs(folder: Path, meta: dict, *, calibration: bool = False) -> dict[str, np.ndarray]:
    """Model inputs made the way serving makes them, to check fused and quantized graphs
    against the exported one: smooth synthetic images (noise would be far from any real
    input), or sentences of several lengths. The calibration set (for static int8) is
    another such set, so the cosine gate is not measured on the inputs it was fitted to."""
    from PIL import Image

    from oddity.embedder.preprocessing import ImageLimits, ImagePreprocessor, TextPreprocessor

    if meta["modality"] == "image":
        rng = np.random.default_rng(1 if calibration else 0)
        images = []
        for _ in range(8):
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize((96, 96), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            images.append(buffer.getvalue())
        return {"pixel_values": ImagePreprocessor(meta["preprocessing"], ImageLimits())(images)}
    sentences = CALIBRATION_SENTENCES if calibration else SAMPLE_SENTENCES
    return TextPreprocessor(folder, meta["preprocessing"])(sentences)


SAMPLE_SENTENCES = [
    "A child drew a house with a red roof and a tree beside it.",
    "Pressure on line 4 rose sharply after the valve was closed.",
    "ok",
    "The delivery arrived two days late and the box was damaged.",
    "Quarterly revenue grew while operating costs stayed flat across all regions.",
    "error: connection reset by peer",
    "She walked the dog along the river every morning before work.",
    "Invoice 1182 was paid twice by mistake.",
]
CALIBRATION_SENTENCES = [
    "The train to the coast was cancelled because of the storm.",
    "Temperature sensor 12 reported values far above its usual range overnight.",
    "thanks!",
    "Two customers asked for a refund after the update broke the login page.",
    "The museum opened a new wing with paintings from the early twentieth century.",
    "warning: disk usage above 90 percent on node 3",
    "He planted tomatoes and beans in the garden behind the house.",
    "Order 5531 shipped to the wrong address and came back.",
]


def _run(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return session.run(["embedding"], {k: v for k, v in inputs.items() if k in names})[0]
