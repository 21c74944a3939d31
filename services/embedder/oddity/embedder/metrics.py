"""Embedder metrics, declared once against the registry passed in.

Reason to change: what the embedder measures.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EmbedderMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        registry = metrics_registry
        self.items = Counter("oddity_embedder_items", "Items embedded.", ["model"], registry=registry)
        self.batch_items = Histogram(
            "oddity_embedder_batch_items",
            "Items per ONNX call after dynamic batching.",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.preprocess_seconds = Histogram(
            "oddity_embedder_preprocess_seconds",
            "Decoding and preprocessing time per request.",
            ["model"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.loaded = Gauge("oddity_embedder_model_loaded", "1 when the model serves.", ["model"], registry=registry)
