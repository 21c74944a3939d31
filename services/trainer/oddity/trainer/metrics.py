"""Trainer metrics, declared once against the registry passed in.

Runs are counted per dataset; what serves (the live version and the evidence its validation
recorded) per dataset and model, so a dashboard can join them with the detector's `model`
series and with the trainer's `dataset` series alike.

Reason to change: what the trainer exposes on /metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from oddity.common import bundle
from oddity.v1 import manifest_pb2

# The `outcome` of a failed job whose model the validation gate refused, and of one the
# trainer's stop ended; the other outcomes are the job's final state (succeeded: published,
# failed, skipped).
REJECTED = "rejected"
STOPPED = "stopped"


class TrainerMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        registry = metrics_registry
        self.jobs = Counter(
            "oddity_trainer_jobs",
            "Training jobs by outcome: succeeded (published), rejected (by the validation gate), failed, skipped, "
            "stopped (by the trainer's stop).",
            ["dataset", "outcome"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "oddity_trainer_job_seconds",
            "Wall time of training jobs (load, train, validate, export, publish), by outcome.",
            ["dataset", "outcome"],
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.running = Gauge("oddity_trainer_jobs_running", "Training jobs running now.", registry=registry)
        self.last_run_rows = Gauge(
            "oddity_trainer_last_run_rows",
            "Rows loaded by the latest run that read the dataset's data (after dropping malformed rows).",
            ["dataset"],
            registry=registry,
        )
        self.last_success = Gauge(
            "oddity_trainer_last_success_timestamp_seconds",
            "When the latest successful (published) run of the dataset ended, in unix seconds.",
            ["dataset"],
            registry=registry,
        )
        self.consecutive_failures = Gauge(
            "oddity_trainer_consecutive_failures",
            "Failed training runs in a row per dataset (0 after a success); automatic retries back off.",
            ["dataset"],
            registry=registry,
        )
        self.live_version = Gauge(
            "oddity_trainer_live_version",
            "The live version (newest complete one) of each dataset's model; 0: none yet.",
            ["dataset", "model"],
            registry=registry,
        )
        self.live_validation = Gauge(
            "oddity_trainer_live_validation",
            "What validation recorded for the live version, per group; the `metric` label names the figure.",
            ["dataset", "model", "group", "metric"],
            registry=registry,
        )
        self.invalid_datasets = Gauge(
            "oddity_trainer_invalid_datasets", "Datasets whose spec is invalid.", registry=registry
        )
        self.scans = Counter(
            "oddity_trainer_scans",
            "Periodic scans of the datasets folder completed (each starts the jobs that are due).",
            registry=registry,
        )
        self._live_series: dict[tuple[str, str], set[tuple[str, str]]] = {}  # (dataset, model) -> (group, metric)
        self._lock = threading.Lock()

    def live(self, dataset: str, manifest: manifest_pb2.ModelManifest | None, *, model: str = "") -> None:
        """The live version of a dataset's model and its validation figures (manifest None: no
        version yet, `model` names it); series of groups or figures it no longer has go."""
        model = manifest.name if manifest is not None else model
        figures = validation_figures(manifest) if manifest is not None else {}
        key = (dataset, model)
        with self._lock:
            self.live_version.labels(dataset, model).set(manifest.version if manifest is not None else 0)
            for group, metric in self._live_series.get(key, set()) - set(figures):
                self.live_validation.remove(dataset, model, group, metric)
            for (group, metric), value in figures.items():
                self.live_validation.labels(dataset, model, group, metric).set(value)
            self._live_series[key] = set(figures)

    def keep_live(self, models: Mapping[str, str | None]) -> None:
        """Drop the live series of datasets that are gone, or whose spec now names another
        model; `models` maps each dataset present to its model (None: its spec is invalid
        right now, so whatever it had is kept)."""
        with self._lock:
            stale = [(d, m) for d, m in self._live_series if d not in models or models[d] not in (None, m)]
            for dataset, model in stale:
                for group, metric in self._live_series.pop((dataset, model)):
                    self.live_validation.remove(dataset, model, group, metric)
                self.live_version.remove(dataset, model)


def validation_figures(manifest: manifest_pb2.ModelManifest) -> dict[tuple[str, str], float]:
    """(group, metric) -> value for every active group: the calibration (threshold percentile,
    expected and cross-validated anomaly rates, rows behind them) and every figure in the
    group's `metrics` (classifiers: accuracy, balanced accuracy; all: ONNX parity)."""
    figures: dict[tuple[str, str], float] = {}
    for group in bundle.active_groups(manifest):
        name = group.name
        if manifest.task != manifest_pb2.MODEL_TASK_CLASSIFICATION:
            figures[(name, "threshold_percentile")] = group.threshold_percentile
            if group.HasField("calibration"):
                calibration = group.calibration
                figures[(name, "expected_anomaly_rate")] = calibration.expected_anomaly_rate
                figures[(name, "cross_validated_anomaly_rate")] = calibration.cross_validated_anomaly_rate
                figures[(name, "calibration_rows")] = float(calibration.rows)
        for metric, value in group.metrics.items():
            figures[(name, metric)] = value
    return figures
