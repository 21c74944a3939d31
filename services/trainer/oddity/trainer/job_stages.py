"""The stages of a training job, each a function of what the stages before it produced:

- plan: the spec (with an operator's threshold) and the kind to train; then this run's data
  against the live version (`Baseline`: fingerprint and live version);
- load: the rows (image and text datasets: embedded), then the plan of the similarity index,
  checked against the rows before anything trains;
- train: the model's groups (pipeline.py), then its similarity index;
- publish: the version written to the model repository.

The runner (runner.py) runs them in order on a worker thread, asks the skip rules
(skip_rules.py) between them and records what happened (job_records.py). No stage records
anything itself.

Reason to change: what a job does at each step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oddity.common import bundle
from oddity.trainer import index_items, job_control, pipeline
from oddity.trainer.checkpoints import JobCheckpoints
from oddity.trainer.data import Dataset, FileDigests, bound_rows, fingerprint, load_dataset
from oddity.trainer.decisions import Decisions
from oddity.trainer.embedding_cache import EmbeddingCache
from oddity.trainer.index_items import IndexEmbedder, IndexPlan
from oddity.trainer.item_datasets import load_item_dataset
from oddity.trainer.jobs import JobRequest
from oddity.trainer.learners import learner_class
from oddity.trainer.publisher import Publisher, unwritable
from oddity.trainer.spec import DatasetSpec, load_spec
from oddity.v1 import manifest_pb2

# A stage's progress: the job's phase and its figures (the job board shows them).
Progress = Callable[[str, dict[str, Any]], None]


class RepositoryUnwritable(Exception):
    """The model repository cannot take a new version (read-only, full, gone): one line, no traceback."""


# -- plan ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the job trains: the spec, with an operator's threshold percentile (0: none), and
    the kind (the Train request's, else the spec's)."""

    spec: DatasetSpec
    kind: str
    threshold_override: float = 0.0

    def details(self) -> dict[str, Any]:
        """What the history records of the plan."""
        override = {"threshold_override": self.threshold_override} if self.threshold_override else {}
        return {**override, "model": self.spec.name, "kind": self.kind}


def plan(request: JobRequest, decided: Decisions) -> Plan:
    """Read the dataset's spec; an operator's SetThreshold outlives retraining."""
    spec = load_spec(request.folder)
    if decided.threshold_percentile:
        spec = with_threshold_override(spec, decided.threshold_percentile)
    kind = request.model_kind or spec.model.kind
    return Plan(with_contamination(spec, kind), kind, decided.threshold_percentile)


def with_contamination(spec: DatasetSpec, kind: str) -> DatasetSpec:
    """The spec as training applies its `contamination` c: kinds that trim (auto) trim at least c."""
    c = spec.contamination
    learner = learner_class(kind)
    if not c or "trim" not in learner.PARAMS or "trim" in spec.model.params:
        return spec
    trim = max(c, float(getattr(learner, "default_trim", 0.0)))
    model = spec.model.model_copy(update={"params": {**spec.model.params, "trim": trim}})
    return spec.model_copy(update={"model": model})


def with_threshold_override(spec: DatasetSpec, percentile: float) -> DatasetSpec:
    """The spec with an operator's threshold percentile. The gate's anomaly-rate bounds were set
    around the spec's own percentile, so they move with it: bounds of [1%, 10%] at p95 (5%
    expected) become [4%, 40%] at p80 (20% expected)."""
    factor = (1 - percentile / 100) / (1 - spec.threshold_percentile / 100)
    low, high = spec.validation.anomaly_rate
    validation = spec.validation.model_copy(update={"anomaly_rate": (min(1.0, low * factor), min(1.0, high * factor))})
    return spec.model_copy(update={"threshold_percentile": percentile, "validation": validation})


@dataclass(frozen=True)
class Baseline:
    """This run's data and spec (their fingerprint) against the live version, if any."""

    fingerprint: str
    live: bundle.VerifiedVersion | None

    @property
    def live_version(self) -> int:
        return self.live.manifest.version if self.live is not None else 0

    @property
    def live_fingerprint(self) -> str:
        return self.live.manifest.data_fingerprint if self.live is not None else ""


def baseline(folder: Path, spec: DatasetSpec, repository: Path, digests: FileDigests) -> Baseline:
    """Fingerprint the data (hashes the source files that changed since `digests` saw them)
    and find the live version."""
    return Baseline(fingerprint(folder, spec, digests), bundle.newest_complete_version(repository, spec.name))


# -- load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """The rows to train on; image and text datasets: what made their vectors, and the cache's
    figures (hits, misses, refused items)."""

    data: Dataset
    embedding: manifest_pb2.EmbeddingSource | None = None
    embedding_stats: dict[str, int] | None = None


def load(
    request: JobRequest, spec: DatasetSpec, embedder: IndexEmbedder, cache: EmbeddingCache, progress: Progress
) -> Loaded:
    """Read the data (the Train request's file, if it named one); embed image and text items."""
    if spec.is_embedded:
        progress("embedding", {})
        data, embedding, stats = load_item_dataset(request.folder, spec, embedder, cache)
        return Loaded(bound_rows(data, spec), embedding, stats)

    def between_chunks() -> None:  # a stop or a spent time budget ends the read at the next chunk
        job_control.check()
        progress("reading", {})

    return Loaded(load_dataset(request.folder, spec, request.data_path, check=between_chunks))


def plan_index(spec: DatasetSpec, loaded: Loaded, embedder: IndexEmbedder) -> IndexPlan | None:
    """The similarity index the spec asks for (None: none), checked before training: a bad id
    column or a missing text model fails the job at once."""
    index_plan = index_items.plan_index(spec, loaded.data, loaded.embedding)
    if index_plan is not None:
        index_items.choose_text_model(index_plan, embedder)
    return index_plan


def tracked_params(planned: Plan, loaded: Loaded, baseline: Baseline) -> dict[str, Any]:
    """The run's parameters as experiment tracking records them."""
    spec, data = planned.spec, loaded.data
    return {
        "kind": planned.kind,
        **{f"params.{k}": v for k, v in spec.model.params.items()},
        "label": spec.label or "",
        "score_column": spec.score_column or "",
        "features": len(data.feature_names),
        "samples": len(data.features),
        "holdout_fraction": spec.validation.holdout_fraction,
        "data_fingerprint": baseline.fingerprint,
    }


# -- train --------------------------------------------------------------------------------


@dataclass
class Built:
    """A trained version ready to publish: its manifest and figures, every file of it (graphs
    and index), and the index as the history records it (None: no index)."""

    trained: pipeline.TrainedModel
    files: dict[str, bytes] = field(default_factory=dict)
    index_figures: dict[str, Any] | None = None


def train(
    planned: Plan,
    baseline: Baseline,
    loaded: Loaded,
    *,
    force: bool,
    progress: Progress,
    checkpoints: JobCheckpoints,
) -> Built:
    """Train, export and validate every group (raises Skipped, ValidationFailed, ValueError)."""
    trained = pipeline.train(
        planned.spec,
        loaded.data,
        fingerprint=baseline.fingerprint,
        force=force,
        kind=planned.kind,
        live=baseline.live,
        progress=progress,
        embedding=loaded.embedding,
        checkpoints=checkpoints,
    )
    return Built(trained, dict(trained.onnx_files))


def build_index(
    built: Built,
    index_plan: IndexPlan,
    embedder: IndexEmbedder,
    cache: EmbeddingCache,
    batch_size: int,
    progress: Progress,
) -> Built:
    """Add the similarity index of the trained rows to the version (raises IndexBuildFailed)."""
    progress("indexing", {"group": ""})
    start = time.perf_counter()
    indexed = index_items.build(index_plan, embedder, cache, batch_size)
    built.trained.durations["index"] = time.perf_counter() - start
    built.trained.manifest.similarity.CopyFrom(indexed.built.index)
    built.files.update(indexed.built.files)
    built.index_figures = indexed.figures()
    return built


# -- publish ------------------------------------------------------------------------------


def publish(publisher: Publisher, built: Built, keep_versions: int) -> int:
    """Write the version into the model repository; returns its number."""
    start = time.perf_counter()
    try:
        version = publisher.publish(built.trained.manifest, built.files, keep_versions)
    except OSError as exc:  # read-only, full or missing volume: the operator's to fix
        raise RepositoryUnwritable(unwritable(publisher.repository, exc)) from exc
    built.trained.durations["publish"] = time.perf_counter() - start
    return version


def completed_details(built: Built, started: float) -> dict[str, Any]:
    """What the history records of a published run, beside the earlier stages' details."""
    trained = built.trained
    details: dict[str, Any] = {
        "metrics": trained.metrics,
        "group_samples": trained.group_samples,
        "duration_seconds": round(time.perf_counter() - started, 3),
        "phase_seconds": {k: round(v, 3) for k, v in trained.durations.items()},
    }
    if trained.epochs:  # every epoch's figures, per group: what MLflow would show
        details["epochs"] = trained.epochs
    if trained.resumed_from_epoch:
        details["resumed_from_epoch"] = trained.resumed_from_epoch
    return details
