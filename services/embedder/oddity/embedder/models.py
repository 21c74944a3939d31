"""Which encoders an embedder serves, and where exported graphs are cached.

Reason to change: how served models are named, sourced and cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EXPORT_FORMAT = 3  # bump when the exported graph or its metadata change shape
META_FILE = "meta.json"


class ModelSource(BaseModel):
    """One encoder: a Hugging Face hub id or a local directory with the weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str
    modality: Literal["image", "text"]
    revision: str = "main"
    # auto: the fastest candidate measured on this machine at export whose embeddings keep
    # min_cosine to ONNX Runtime fp32 (precision_choice.py); or one precision / runtime forced.
    precision: Literal["auto", "fp32", "int8", "bf16"] = "auto"
    backend: Literal["auto", "onnxruntime", "openvino"] = "auto"
    # Text: longest input in tokens (0: the tokenizer's own limit).
    max_length: int = 0
    # ONNX Runtime's transformer optimizer at export (fused LayerNorm, GELU); the fused graph
    # is kept only when its outputs match the exported one's.
    optimize: bool = True
    # Fused Attention too. Off by default: on AMD EPYC (Zen 4, AVX-512, onnxruntime 1.32) the
    # fused kernel ran ViT-base fp32 within noise of the unfused graph (-15% to +8% between
    # runs), MiniLM ~15% slower, and int8 ViT slower both as QAttention (~10%) and as
    # MultiHeadAttention beside quantized projections (68 vs 61 ms/image);
    # `python -m bench.embedder_speed --explore` compares them on a CPU.
    fuse_attention: bool = False
    # The cosine gate: a candidate other than ONNX Runtime fp32 serves only if every sample
    # embedding keeps this cosine to ONNX Runtime fp32's.
    min_cosine: float = Field(default=0.998, gt=0, le=1)

    @property
    def is_local(self) -> bool:
        return Path(self.model_id).is_dir()

    def cache_key(self) -> str:
        """Export cache key: model id, revision and export settings; for a local directory also
        the weight files' names, sizes and times, so replaced weights are exported again."""
        parts: dict = {**self.model_dump(), "format": EXPORT_FORMAT}
        if self.is_local:
            parts["files"] = sorted(
                (p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in Path(self.model_id).iterdir() if p.is_file()
            )
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
        label = "".join(c if c.isalnum() or c in "-_." else "-" for c in Path(self.model_id).name)[:40]
        return f"{label}-{self.precision}-{digest}"


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META_FILE).read_text())


def write_meta(folder: Path, meta: dict) -> None:
    path = folder / META_FILE
    path.write_text(json.dumps(meta, indent=2, sort_keys=True))
    with path.open("rb") as f:
        os.fsync(f.fileno())
