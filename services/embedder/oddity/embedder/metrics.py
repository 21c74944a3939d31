"""Embedder metrics, declared once against the registry passed in.

A request's time splits into: its own preprocessing (decoding images, checking texts; stage
`request`), the wait in the batcher's queue, the batch's preprocessing (tokenizing texts,
stacking images; stage `batch`) and the ONNX Runtime call (inference).

Reason to change: what the embedder measures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 0.5 ms .. 10 s: a text batch takes milliseconds, a ViT-base batch of 32 on CPU seconds.
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REQUEST_STAGE, BATCH_STAGE = "request", "batch"


class EmbedderMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        registry = metrics_registry
        self.items = Counter(
            "oddity_embedder_items", "Items embedded, by kind (image or text).", ["model", "kind"], registry=registry
        )
        self.batch_items = Histogram(
            "oddity_embedder_batch_items",
            "Items per ONNX call after dynamic batching.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "oddity_embedder_queue_wait_seconds",
            "Time from a request's items entering the batcher's queue to their batch's ONNX call starting.",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.preprocess_seconds = Histogram(
            "oddity_embedder_preprocess_seconds",
            "Preprocessing time: per request (stage=request: decoding images, checking texts) and per "
            "batch (stage=batch: tokenizing texts, stacking images).",
            ["model", "stage"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "oddity_embedder_inference_seconds",
            "ONNX Runtime time per batch.",
            ["model"],
            buckets=SECONDS_BUCKETS,
            registry=registry,
        )
        self.loaded = Gauge("oddity_embedder_model_loaded", "1 when the model serves.", ["model"], registry=registry)
