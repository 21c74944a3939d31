"""Trainer settings: flags (--data-volume ...) or env vars (ODDITY_TRAINER_DATA_VOLUME ...),
and the layout of the data volume they imply.

Reason to change: the trainer's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from oddity.common.clients.targets import check_verifiable, normalize
from oddity.common.settings import ServiceSettings


class TrainerSettings(ServiceSettings):
    """Settings of the trainer service."""

    model_config = SettingsConfigDict(env_prefix="ODDITY_TRAINER_", cli_prog_name="oddity-trainer")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one (logged at start).")
    metrics_port: int | None = Field(9103, ge=0, le=65535, description="Prometheus /metrics port; unset to disable.")
    data_volume: Path = Field(
        Path("volumes/data"),
        description="Data volume: datasets/<name>/dataset.yaml + files; history and job state under .oddity/.",
    )
    model_repository: Path = Field(Path("volumes/models"), description="Where versions are published.")
    detectors: list[str] = Field(
        default_factory=list,
        description='Detector addresses told to load new versions at once, e.g. ["localhost:50052"].',
    )
    detector_services: list[str] = Field(
        default_factory=list,
        description="Detector service names (host:port) whose every address is a detector replica, e.g. a "
        'Kubernetes headless Service ["oddity-detector-replicas.oddity.svc:50052"]: each replica is told; the '
        "name is resolved again before each notification.",
    )
    embedder: str = Field(
        "127.0.0.1:50051",
        description="Embedder address, for image and text datasets: host:port (one embedder); "
        "dns:///name:port to spread the batches over every address the name resolves to, e.g. a Kubernetes "
        "headless Service; or IP addresses separated by commas (or a list), e.g. "
        "127.0.0.1:50061,127.0.0.1:50062 (not with TLS: a list names no server to check). Spread calls go round "
        "robin to the embedders that are up.",
    )
    embedder_batches_in_flight: int = Field(
        4,
        ge=1,
        le=64,
        description="Embed calls a training job keeps going at once (each one batch of the dataset's "
        "embedder.batch_size items), so several embedders work on one job; also bounds the items held in "
        "flight.",
    )

    embedder_connect_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="How long a training job waits for the embedder's first answer (an embedder that is "
        "missing when the job starts fails the job after this).",
    )
    embedder_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="How long one batch of a training job may wait for the embedder once embedding has "
        "begun, e.g. while the embedder restarts.",
    )
    embedder_token_file: Path | None = Field(
        None, description="Bearer token (a file, first line) for the embedder, when it requires tokens."
    )
    detector_token_file: Path | None = Field(
        None, description="Admin bearer token (a file, first line) for the detectors' LoadModel, if they need one."
    )
    detector_timeout_seconds: float = Field(
        5.0, gt=0, description="Deadline of telling a detector to load a new version (it also polls)."
    )
    max_concurrent_jobs: int = Field(1, ge=1, description="Training jobs that may run at the same time.")
    torch_threads: int = Field(
        1,
        ge=0,
        le=256,
        description="Threads torch trains with (autoencoder, mlp_classifier), set once for the process; 0: one "
        "per usable core. Their small steps train fastest on one thread.",
    )
    watch: bool = Field(True, description="React to file-system events on the data volume.")
    force_polling: bool = Field(
        False, description="Poll the file system instead of using events (network volumes often deliver none)."
    )
    scan_interval_seconds: float = Field(
        30.0, gt=0, description="Fingerprint every dataset this often, as a fallback for missed events."
    )
    retry_backoff_seconds: float = Field(
        30.0,
        gt=0,
        description="After a failed run, automatic training of the same data waits this long, doubling with "
        "each failure in a row (a change of the files or spec, or a Train request, ends the wait).",
    )
    retry_backoff_max_seconds: float = Field(3600.0, gt=0, description="The longest wait between automatic retries.")
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI (e.g. http://mlflow:5000): each training job becomes a run with its "
        "parameters, per-epoch metrics and ONNX graphs. Unset: MLFLOW_TRACKING_URI if set, else no tracking. "
        "Needs the oddity-trainer[tracking] extra.",
    )

    @field_validator("embedder", mode="before")
    @classmethod
    def _embedder_addresses(cls, value: object) -> object:
        return normalize(value) if isinstance(value, (str, list, tuple)) else value

    @model_validator(mode="after")
    def _embedder_verifiable(self) -> Self:
        if self.embedder and self.tls().calls_tls:
            check_verifiable(self.embedder)
        return self

    @property
    def datasets_root(self) -> Path:
        return self.data_volume / "datasets"

    @property
    def state_dir(self) -> Path:
        """History, crash records of running jobs, their checkpoints and the embedding cache."""
        return self.data_volume / ".oddity"
