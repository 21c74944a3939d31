"""Exporting Hugging Face encoders to ONNX, once per (model, revision, settings).

This is the only module of the embedder that needs torch and transformers; serving needs
onnxruntime, tokenizers and Pillow only. Loading goes through transformers'
`from_pretrained`, so a hub id and a local directory work alike; on a machine without hub
access a hub id fails, and the error says how to provide the weights.

Reason to change: how Hugging Face models become ONNX graphs.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from oddity.common import bundle
from oddity.embedder.models import META_FILE, ModelSource, write_meta


class ExportError(Exception):
    """The model cannot be loaded or exported; the message says what to do."""


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
        if source.modality == "image":
            _export_image(source, staging)
        else:
            _export_text(source, staging)
        if source.precision == "int8":
            _quantize(staging)
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
        f"'{{\"<name>\": {{\"model_id\": \"/path/to/local/dir\", \"modality\": \"{source.modality}\"}}}}'"
    )


def _load(loader, source: ModelSource, what: str):
    try:
        return loader(source.model_id, revision=None if source.is_local else source.revision)
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


def _export_image(source: ModelSource, folder: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModel

    _library_logs_as_ours()

    config = _load(AutoConfig.from_pretrained, source, "config")
    processor = _load(AutoImageProcessor.from_pretrained, source, "image processor")
    loader = CLIPVisionModel.from_pretrained if config.model_type == "clip" else AutoModel.from_pretrained
    model = _load(loader, source, "weights").eval()
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


def _export_text(source: ModelSource, folder: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    _library_logs_as_ours()

    tokenizer = _load(AutoTokenizer.from_pretrained, source, "tokenizer")
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{source.model_id!r} has no fast tokenizer (tokenizer.json); serving needs one")
    model = _load(AutoModel.from_pretrained, source, "weights").eval()
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


def _common_meta(source: ModelSource, dimension: int) -> dict:
    return {
        "model_id": source.model_id,
        "revision": "local" if source.is_local else source.revision,
        "modality": source.modality,
        "precision": source.precision,
        "dimension": dimension,
        "graph": "model.onnx",
    }


def _quantize(folder: Path) -> None:
    """Dynamic int8 quantization of the weights (activations stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from oddity.embedder.models import read_meta

    quantize_dynamic(folder / "model.onnx", folder / "model.int8.onnx", weight_type=QuantType.QInt8)
    (folder / "model.onnx").unlink()
    meta = read_meta(folder)
    meta["graph"] = "model.int8.onnx"
    write_meta(folder, meta)
