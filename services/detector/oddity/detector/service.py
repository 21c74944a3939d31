"""The detector's use cases, free of protobuf: score rows (and items through the embedder),
list/get/load/unload models.

Small requests are scored in micro-batches, on the event loop (a thread hop costs more than
the model) or, when a batch is too costly for it, on a thread of its own; large requests run
on a small worker pool; so the loop keeps serving while ONNX Runtime works.

Reason to change: what the detector offers its callers (the use cases and their checks).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from oddity.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable, shown
from oddity.common.logging import annotate_request
from oddity.common.scoring import Scores
from oddity.detector.batching import MicroBatcher
from oddity.detector.embedder_calls import EmbedderSource, embed_for
from oddity.detector.metrics import DetectorMetrics
from oddity.detector.model import LoadedModel
from oddity.detector.registry import ModelRegistry, ModelStatus
from oddity.v1 import manifest_pb2

# Told whether some model serves, after every scan, load and unload (the app's readiness).
ServingListener = Callable[[bool], Awaitable[None]]


@dataclass(slots=True)
class DetectInput:
    model: str
    rows: np.ndarray  # [N, D] float32
    version: int = 0
    feature_names: Sequence[str] = ()
    routing_values: Sequence[float] = ()
    threshold_percentile: float | None = None
    explain_top_k: int = 0


@dataclass(slots=True)
class DetectOutput:
    model: str
    version: int
    kind: str
    feature_names: list[str]
    scores: Scores
    class_labels: list[str]


@dataclass(slots=True)
class DetectImagesInput:
    model: str
    images: Sequence[bytes] = ()
    texts: Sequence[str] = ()
    routing_values: Sequence[float] = ()
    extra_features: np.ndarray | None = None  # [items, extra]
    threshold_percentile: float | None = None


@dataclass(frozen=True)
class DetectLimits:
    max_rows: int = 65536
    inline_max_values: int = 32768  # requests up to this many values are scored on the event loop
    max_batch_rows: int = 256
    max_batch_values: int = 65536
    inline_max_batch_values: int = 32768  # micro-batches up to this many values: on the event loop
    inline_max_batch_seconds: float = 0.002  # ... and expected to take at most this long
    max_batch_delay: float = 0.003


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice` (Linux schedules threads one by one)."""
    if nice and sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)


def check_rows(model: LoadedModel, rows: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    """Validate rows against the model's manifest; reorder named columns to its order."""
    d = rows.shape[1]
    if feature_names:
        rows = _order_columns(model, rows, list(feature_names))
    elif d != model.dimension:
        names = f" ({', '.join(model.feature_names)})" if model.feature_names and model.dimension <= 16 else ""
        raise InvalidArgument(
            f"rows have {d} features; model {model.name!r} v{model.version} expects {model.dimension}{names}"
        )
    finite = np.isfinite(rows)
    if not finite.all():
        row, column = (int(i[0]) for i in np.nonzero(~finite))
        name = model.feature_names[column] if model.feature_names else f"#{column}"
        raise InvalidArgument(f"row {row}, feature {name!r} is {rows[row, column]} (NaN and Inf are not scored)")
    return rows


def _order_columns(model: LoadedModel, rows: np.ndarray, names: list[str]) -> np.ndarray:
    if len(names) != rows.shape[1]:
        raise InvalidArgument(f"{len(names)} feature_names for rows with {rows.shape[1]} features")
    if not model.feature_names:
        raise InvalidArgument(f"model {model.name!r} has no feature names; send rows without feature_names")
    if names == model.feature_names:
        return rows
    expected = model.feature_names
    missing = [f for f in expected if f not in names]
    unknown = [f for f in names if f not in expected]
    if missing or unknown or len(set(names)) != len(names):
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {shown(str(unknown))}")
        if len(set(names)) != len(names):
            parts.append("duplicate names")
        raise InvalidArgument(f"feature_names do not match model {model.name!r}: " + "; ".join(parts))
    order = [names.index(f) for f in expected]
    return np.ascontiguousarray(rows[:, order])


class DetectorService:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: DetectorMetrics,
        *,
        limits: DetectLimits,
        workers: int = 2,
        worker_nice: int = 0,
        embedder: EmbedderSource | None = None,
        on_serving_changed: ServingListener | None = None,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.limits = limits
        # Large requests run at a lower CPU priority (`worker_nice`), and so do the threads they
        # split their rows over (made by these threads, they inherit it): when they take both
        # cores, the event loop and the small requests it scores still get one at once.
        self._pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="oddity-infer", initializer=_lower_priority, initargs=(worker_nice,)
        )
        # Micro-batches too costly for the loop, one at a time (see batching.py).
        self._batch_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oddity-batch")
        self._batcher = MicroBatcher(
            max_batch_rows=limits.max_batch_rows,
            max_delay=limits.max_batch_delay,
            observe_batch=metrics.observe_batch,
            observe_scores=self._observe_scores,
            max_batch_values=limits.max_batch_values,
            inline_max_values=limits.inline_max_batch_values,
            inline_max_seconds=limits.inline_max_batch_seconds,
            batch_thread=self._batch_thread,
        )
        self._embedder = embedder
        self._on_serving_changed = on_serving_changed

    async def detect(self, request: DetectInput) -> DetectOutput:
        n = request.rows.shape[0]
        if n > self.limits.max_rows:
            raise ResourceExhausted(f"request has {n} rows; the limit is {self.limits.max_rows} per request")
        percentile = request.threshold_percentile
        if percentile is not None and not 0.0 < percentile < 100.0:
            raise InvalidArgument(f"threshold_percentile must lie in (0, 100), got {percentile}")
        model = self.registry.acquire(request.model)
        handed_off = False
        try:
            annotate_request(model=model.name, version=model.version)
            if request.version and request.version != model.version:
                raise NotFound(
                    f"version {request.version} of model {model.name!r} is not serving (serving {model.version})"
                )
            if request.explain_top_k > model.dimension:
                raise InvalidArgument(
                    f"explain_top_k {request.explain_top_k} exceeds the model's {model.dimension} features"
                )
            series = self.metrics.series(model.name, model.version)
            if request.rows.size > self.limits.inline_max_values:
                # Checked on the worker: a pass over every value, which the event loop (and
                # the small requests it serves meanwhile) need not wait for.
                start = time.perf_counter()
                future = asyncio.get_running_loop().run_in_executor(
                    self._pool, self._check_score_and_release, model, request
                )
                handed_off = True  # the worker returns the lease, even if this call is cancelled
                scores, checking = await future
                series.observe(scores)
                start += checking
            else:
                rows = check_rows(model, request.rows, request.feature_names)
                start = time.perf_counter()
                if request.explain_top_k:
                    self.metrics.observe_batch(1, n)  # scored alone
                    scores = self._score(model, rows, request)
                    series.observe(scores)
                else:  # the batcher records its batches' calls and rows (once per batch)
                    scores = await self._batcher.score(model, rows, request.routing_values, percentile)
            series.latency.observe(time.perf_counter() - start)
            return DetectOutput(
                model=model.name,
                version=model.version,
                kind=model.kind,
                feature_names=model.feature_names,
                scores=scores,
                class_labels=model.class_labels,
            )
        finally:
            if not handed_off:
                model.release()

    def _observe_scores(self, model: LoadedModel, scores: Scores) -> None:
        self.metrics.series(model.name, model.version).observe(scores)

    @staticmethod
    def _score(model: LoadedModel, rows: np.ndarray, request: DetectInput, *, bulk: bool = False) -> Scores:
        return model.score(
            rows,
            request.routing_values,
            threshold_percentile=request.threshold_percentile,
            explain_top_k=request.explain_top_k,
            bulk=bulk,
        )

    def _check_score_and_release(self, model: LoadedModel, request: DetectInput) -> tuple[Scores, float]:
        """On a worker: the scores, and the seconds the check took (not scoring time)."""
        try:
            start = time.perf_counter()
            rows = check_rows(model, request.rows, request.feature_names)
            checking = time.perf_counter() - start
            self.metrics.observe_batch(1, rows.shape[0])  # scored alone
            return self._score(model, rows, request, bulk=True), checking
        finally:
            model.release()

    async def detect_images(self, request: DetectImagesInput) -> tuple[DetectOutput, str, str]:
        """Embed the items with the embedder model the manifest names, append the extra
        features, score. Returns (output, embedder model id, revision)."""
        if self._embedder is None:
            raise Unavailable("no embedder is configured on this detector (--embedder)")
        n = len(request.images) + len(request.texts)
        if n == 0:
            raise InvalidArgument("the request has no images or texts")
        if request.images and request.texts:
            raise InvalidArgument("send images or texts, not both")
        with self.registry.lease(request.model) as model:
            source = model.manifest.embedding if model.manifest.HasField("embedding") else None
            version = model.version
        if source is None:
            raise FailedPrecondition(f"model {request.model!r} was not trained on embeddings; use Detect")
        if (source.modality == "image") != bool(request.images):
            raise InvalidArgument(f"model {request.model!r} scores {source.modality}s")
        made = f"model {shown(request.model)!r} v{version} was trained on"
        embeddings = await embed_for(self._embedder(), source, made, images=request.images, texts=request.texts)
        vectors = embeddings.vectors
        extra = self._extra_features(source, request, n)
        rows = np.hstack([vectors, extra]).astype(np.float32) if extra is not None else vectors
        output = await self.detect(
            DetectInput(
                model=request.model,
                rows=rows,
                version=version,
                routing_values=request.routing_values,
                threshold_percentile=request.threshold_percentile,
            )
        )
        return output, embeddings.model_id, embeddings.revision

    @staticmethod
    def _extra_features(source: manifest_pb2.EmbeddingSource, request: DetectImagesInput, n: int) -> np.ndarray | None:
        names = list(source.extra_features)
        if not names:
            return None
        if request.extra_features is not None:
            if request.extra_features.shape != (n, len(names)):
                raise InvalidArgument(
                    f"extra_features has shape {list(request.extra_features.shape)}; expected [{n}, {len(names)}] "
                    f"for {names}"
                )
            return request.extra_features
        values = np.asarray(request.routing_values, dtype=np.float64)
        if len(names) == 1 and len(values) in (1, n):
            return np.broadcast_to(values, (n,)).reshape(n, 1)
        raise InvalidArgument(f"send extra_features for {names} (or one routing value per item)")

    # -- model management ---------------------------------------------------------------

    def list_models(self) -> list[ModelStatus]:
        return self.registry.statuses()

    def get_model(self, name: str) -> ModelStatus:
        return self.registry.status(name)

    async def load_model(self, name: str, version: int = 0) -> ModelStatus:
        if version < 0:
            raise InvalidArgument(f"version must be >= 0, got {version}")
        try:
            return await asyncio.to_thread(self.registry.load, name, version)
        finally:
            await self._serving_changed()

    async def unload_model(self, name: str) -> ModelStatus:
        try:
            return await asyncio.to_thread(self.registry.unload, name)
        finally:
            await self._serving_changed()

    async def refresh(self) -> bool:
        try:
            return await asyncio.to_thread(self.registry.refresh)
        finally:
            await self._serving_changed()

    async def _serving_changed(self) -> None:
        if self._on_serving_changed is not None:
            await self._on_serving_changed(self.registry.has_models)

    def close(self) -> None:
        self._batch_thread.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.registry.close()
