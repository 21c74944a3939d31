"""The embedder's use cases, free of protobuf: load (export once, cached) and serve models.

Reason to change: the embedder's use cases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import Counter, Histogram

from oddity.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StillLoading,
    shown,
)
from oddity.common.logging import annotate_request, get_logger
from oddity.embedder.batching import DynamicBatcher
from oddity.embedder.export import ExportError, ensure_exported
from oddity.embedder.metrics import BATCH_STAGE, REQUEST_STAGE, EmbedderMetrics
from oddity.embedder.preprocessing import ImageLimits
from oddity.embedder.runtime import EmbeddingModel, Item
from oddity.embedder.settings import EmbedderSettings

log = get_logger("oddity.embedder")
IMAGE_CHUNK = 8  # images decoded per pool task: small enough that inference starts early


@dataclass
class Served:
    model: EmbeddingModel
    batcher: DynamicBatcher
    # The model's label children, so a request does no labels() lookup.
    preprocess_seconds: Histogram
    items: Counter


class EmbedderService:
    def __init__(self, settings: EmbedderSettings, metrics: EmbedderMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limits = ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
        self.models: dict[str, Served] = {}
        self.errors: dict[str, str] = {}
        for name in settings.models:  # a model that never loads still has a series to alert on
            metrics.loaded.labels(name).set(0)
        # One inference worker: each call already uses intra_op_threads cores.
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oddity-embed")
        # Decoding, resizing and tokenizing overlap the running ONNX call.
        self._preprocess = ThreadPoolExecutor(
            max_workers=settings.preprocess_workers, thread_name_prefix="oddity-decode"
        )

    @property
    def ready(self) -> bool:
        """Ready as soon as one model serves; a model that failed is unavailable by name only."""
        return bool(self.models)

    def load_order(self) -> list[str]:
        """Models whose weights are local (or already exported) first: the embedder serves them
        in seconds while a hub model is still being fetched and exported."""
        sources = self.settings.models
        return sorted(sources, key=lambda name: not sources[name].is_local)

    def load(self, name: str) -> bool:
        """Export (once; cached) and load one configured model; False when it cannot be loaded
        (logged in one line saying how to provide its weights)."""
        source = self.settings.models[name]
        try:
            folder = ensure_exported(source, self.settings.cache_dir)
            model = EmbeddingModel(name, folder, limits=self.limits, session=self.settings.session_config())
        except (ExportError, OSError, ValueError) as exc:
            self.errors[name] = str(exc)
            self.metrics.loaded.labels(name).set(0)
            log.error("model not loaded", model=name, model_id=source.model_id, error=str(exc))
            return False
        prepare, run = self._timed_stages(model)
        batcher = DynamicBatcher(
            run,
            self._inference,
            prepare=prepare,
            prepare_executor=self._preprocess,
            max_batch_size=self.settings.max_batch_size,
            max_wait=self.settings.max_batch_delay_ms / 1000,
            observe_batch=self.metrics.batch_items.labels(name).observe,
            observe_wait=self.metrics.queue_wait_seconds.labels(name).observe,
        )
        self.models[name] = Served(
            model,
            batcher,
            self.metrics.preprocess_seconds.labels(name, REQUEST_STAGE),
            self.metrics.items.labels(name, model.modality),
        )
        self.metrics.loaded.labels(name).set(1)
        log.info(
            "model loaded",
            model=name,
            model_id=source.model_id,
            dimension=model.dimension,
            modality=model.modality,
            backend=model.meta["backend"],
            precision=model.meta["precision"],
            graph=model.meta["graph"],
            optimization=model.meta.get("optimization"),
            quantization=model.meta.get("quantization"),
            choice=model.meta["choice"],
            session=model.session_config.describe(),
        )
        return True

    def _served(self, name: str) -> Served:
        name = name or self.settings.default_model
        served = self.models.get(name)
        if served is None:
            if name in self.errors:  # retrying will not help until its weights are provided
                raise FailedPrecondition(f"model {name!r} is not loaded: {self.errors[name]}")
            if name in self.settings.models:
                raise StillLoading(f"model {name!r} is still loading")
            raise NotFound(f"model {shown(name)!r} not found; served: {sorted(self.settings.models)}")
        return served

    async def embed(self, model_name: str, items: list[Item]) -> tuple[EmbeddingModel, np.ndarray]:
        if not items:
            raise InvalidArgument("the request has no items")
        if len(items) > self.settings.max_items_per_request:
            raise ResourceExhausted(
                f"the request has {len(items)} items; the limit is {self.settings.max_items_per_request}"
            )
        served = self._served(model_name)
        model = served.model
        annotate_request(model=model.name)
        model.check(items)
        loop = asyncio.get_running_loop()
        # Images are decoded in chunks on the pool, each queued for inference when ready, so
        # the first batch starts while later images are still being decoded.
        chunk = min(self.settings.max_batch_size, IMAGE_CHUNK if model.modality == "image" else len(items))

        async def part(start: int) -> np.ndarray:
            began = time.perf_counter()
            size = min(chunk, len(items) - start)
            payload = await loop.run_in_executor(
                self._preprocess, model.request_payload, items[start : start + size], start
            )
            served.preprocess_seconds.observe(time.perf_counter() - began)
            return await served.batcher.submit(payload, size)

        rows = np.concatenate(await asyncio.gather(*(part(start) for start in range(0, len(items), chunk))))
        served.items.inc(len(items))
        return model, rows

    def _timed_stages(self, model: EmbeddingModel) -> tuple[Callable[[list[Any]], Any], Callable[[Any], np.ndarray]]:
        """The batcher's two stages, each timed: batch preprocessing (on the preprocessing
        pool, overlapping the running batch) and inference."""
        preprocess = self.metrics.preprocess_seconds.labels(model.name, BATCH_STAGE)
        inference = self.metrics.inference_seconds.labels(model.name)

        def prepare(payloads: list[Any]) -> dict[str, np.ndarray]:
            began = time.perf_counter()
            inputs = model.batch_inputs(payloads)
            preprocess.observe(time.perf_counter() - began)
            return inputs

        def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
            began = time.perf_counter()
            rows = model.run(inputs)
            inference.observe(time.perf_counter() - began)
            return rows

        return prepare, run

    def info(self, name: str = "") -> list[dict]:
        """What the named model (or every model) serves as. Every model is UNAVAILABLE while one
        is still loading: a list without it would say it is not served, and a caller choosing
        among the models (the trainer picking a text model) would decide on half the list."""
        loading = sorted(set(self.settings.models) - set(self.models) - set(self.errors))
        if not name and loading:
            raise StillLoading(f"models still loading: {', '.join(loading)}; ask again, or name a loaded model")
        names = [name] if name else sorted(self.models)
        result = []
        for model_name in names:
            info = self._served(model_name).model.info()
            info["is_default"] = model_name == self.settings.default_model
            result.append(info)
        return result

    async def close(self) -> None:
        for served in self.models.values():
            await served.batcher.close()
        self._inference.shutdown(wait=True)
        self._preprocess.shutdown(wait=True)
