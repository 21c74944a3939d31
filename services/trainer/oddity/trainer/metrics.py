"""Trainer metrics, declared once against the registry passed in.

Reason to change: what the trainer exposes on /metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class TrainerMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        registry = metrics_registry
        self.jobs = Counter(
            "oddity_trainer_jobs", "Training jobs by outcome.", ["dataset", "outcome"], registry=registry
        )
        self.job_seconds = Histogram(
            "oddity_trainer_job_seconds",
            "Wall time of training jobs (load, train, validate, export, publish).",
            ["dataset"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self.running = Gauge("oddity_trainer_jobs_running", "Training jobs running now.", registry=registry)
        self.live_version = Gauge(
            "oddity_trainer_live_version", "Newest complete version per dataset.", ["dataset"], registry=registry
        )
        self.invalid_datasets = Gauge(
            "oddity_trainer_invalid_datasets", "Datasets whose spec is invalid.", registry=registry
        )
        self.consecutive_failures = Gauge(
            "oddity_trainer_consecutive_failures",
            "Failed training runs in a row per dataset (0 after a success); automatic retries back off.",
            ["dataset"],
            registry=registry,
        )
