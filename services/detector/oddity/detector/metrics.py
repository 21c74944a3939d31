"""Detector metrics, declared once against the registry passed in.

Reason to change: what the detector exposes on /metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from oddity.common.metrics import LATENCY_BUCKETS


class DetectorMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        registry = metrics_registry
        self.rows = Counter("oddity_detector_rows", "Rows scored.", ["model"], registry=registry)
        self.anomalies = Counter(
            "oddity_detector_anomalies", "Rows flagged as anomalous.", ["model", "group"], registry=registry
        )
        self.fallback_rows = Counter(
            "oddity_detector_fallback_rows",
            "Rows scored by the 'all' group because their own group had no active model.",
            ["model"],
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "oddity_detector_inference_seconds",
            "Time spent scoring a request (routing, ONNX Runtime, normalization).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_requests = Histogram(
            "oddity_detector_batch_requests",
            "Requests coalesced into one ONNX Runtime call by the micro-batcher.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=registry,
        )
        self.serving_version = Gauge(
            "oddity_detector_serving_version", "Version serving per model (0: none).", ["model"], registry=registry
        )
        self.loads = Counter(
            "oddity_detector_model_loads", "Model version loads, by outcome.", ["model", "outcome"], registry=registry
        )
        self.load_seconds = Histogram(
            "oddity_detector_model_load_seconds",
            "Time to verify, load and warm up a version.",
            ["model"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.rejected_versions = Counter(
            "oddity_detector_rejected_versions",
            "Version folders not served: incomplete or corrupt bundle, or a graph that fails to load.",
            ["model", "reason"],
            registry=registry,
        )
        self.swaps = Counter("oddity_detector_swaps", "Serving-version swaps.", ["model"], registry=registry)
        self.draining_versions = Gauge(
            "oddity_detector_draining_versions",
            "Retired versions still finishing in-flight requests.",
            registry=registry,
        )
