"""Detector settings: flags (--model-repository ...) or env vars (ODDITY_DETECTOR_MODEL_REPOSITORY ...).

Reason to change: the detector's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from oddity.common.clients.targets import check_verifiable, normalize
from oddity.common.settings import ServiceSettings


class DetectorSettings(ServiceSettings):
    """Settings of the detector service."""

    model_config = SettingsConfigDict(env_prefix="ODDITY_DETECTOR_", cli_prog_name="oddity-detector")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged at start).")
    metrics_port: int | None = Field(9102, ge=0, le=65535, description="Prometheus /metrics port; unset to disable.")
    model_repository: Path = Field(
        Path("volumes/models"), description="Model repository: <repository>/<model>/<version>/manifest.json."
    )
    poll_interval_seconds: float = Field(2.0, gt=0, description="How often the repository is scanned for new versions.")
    pinned_versions: dict[str, int] = Field(
        default_factory=dict, description='Versions to serve instead of the newest, e.g. {"sensors": 3}.'
    )
    max_rows_per_request: int = Field(
        65536, gt=0, description="Largest number of rows in one Detect request; more -> RESOURCE_EXHAUSTED."
    )
    intra_op_threads: int = Field(
        1,
        ge=1,
        description="Threads a small request's rows are split over (each part one single-threaded ONNX Runtime "
        "call, so answers do not depend on the threads).",
    )
    bulk_intra_op_threads: int = Field(
        2, ge=1, description="Threads a large request's rows (those run on a worker) are split over."
    )
    run_memory_budget_mb: int = Field(
        128,
        ge=1,
        description="Scratch memory one request's ONNX Runtime runs may take together: runs take as many rows as "
        "the model's declared memory per row allows (more, smaller runs for large requests); a request whose "
        "smallest run (64 rows) would exceed it -> RESOURCE_EXHAUSTED.",
    )
    inference_workers: int = Field(
        2, ge=1, description="Threads that run large batches outside the event loop (about one per core)."
    )
    inference_worker_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How much lower those threads (and the threads they split rows over) run in the CPU "
        "scheduler (Linux nice): while large requests take every core, small requests keep their latency.",
    )
    inline_max_values: int = Field(
        32768,
        ge=0,
        description="Requests up to rows x features values are scored on the event loop; larger ones on a worker.",
    )
    max_batch_rows: int = Field(
        256, ge=1, description="Small concurrent requests are coalesced into ONNX calls of up to this many rows."
    )
    max_batch_values: int = Field(
        65536,
        ge=1,
        description="A micro-batch also closes at this many values (rows x features): wide rows cost by values.",
    )
    inline_max_batch_values: int = Field(
        32768,
        ge=0,
        description="Micro-batches up to rows x features values are scored on the event loop; larger ones on a "
        "thread of their own, so health checks and other calls do not wait behind them.",
    )
    inline_max_batch_ms: float = Field(
        2.0,
        ge=0,
        description="Micro-batches the model's recent batches say take more CPU time than this are scored on "
        "that thread too (a value costs a thousandfold more in some models than in others).",
    )
    # 3 ms measured best on 2 cores with 32 one-row callers: 2 ms made more, smaller ONNX
    # calls (82% of the echo server's calls/s), 4 ms raised p99 (1.5x echo's).
    max_batch_delay_ms: float = Field(
        3.0, ge=0, description="Under load, how long a micro-batch may wait for more requests (0: never wait)."
    )
    embedder: str = Field(
        "",
        description="Embedder address for DetectImages (empty: none): host:port, e.g. 127.0.0.1:50051; "
        "dns:///name:port to spread the calls over every address the name resolves to, e.g. a Kubernetes "
        "headless Service; or IP addresses separated by commas (or a list; not with TLS). Spread calls go round "
        "robin to the embedders that are up.",
    )

    embedder_token_file: Path | None = Field(
        None, description="Bearer token (a file, first line) for the embedder, when it requires tokens."
    )
    embedder_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Deadline of one Embed call: DetectImages waits this long for an embedder that is down or "
        "restarting, then answers UNAVAILABLE.",
    )
    warmup_batch_size: int = Field(64, ge=1, description="Batch size of the warm-up run of every new version.")

    @field_validator("embedder", mode="before")
    @classmethod
    def _embedder_addresses(cls, value: object) -> object:
        return normalize(value) if isinstance(value, (str, list, tuple)) else value

    @model_validator(mode="after")
    def _embedder_verifiable(self) -> Self:
        if self.embedder and self.tls().calls_tls:
            check_verifiable(self.embedder)
        return self
