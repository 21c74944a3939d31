"""Detector metrics, declared once against the registry passed in.

The request path never calls `labels()`: it records into a `ServingSeries`, the label
children of one served version cached by group, because a one-row Detect takes about a
millisecond and its metrics must stay a few microseconds of that. Normalized scores are
counted by a histogram of our own (`ScoreHistogram`) that takes a request's whole score
array in one numpy pass instead of one `observe()` per row.

Per-version series (rows and anomalies by model, group and version) are kept for the serving
version and the one it replaced, so the last increments of a retired version are still
scraped; older versions' series are dropped and the label space stays bounded.

Reason to change: what the detector exposes on /metrics.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from oddity.common import bundle
from oddity.common.metrics import LATENCY_BUCKETS
from oddity.common.scoring import Scores
from oddity.v1 import manifest_pb2

# Normalized scores live in [0, 1); alerts care about the top few percent, so the buckets
# are fine near 1 (0.99 = more unusual than 99% of the normal rows the model was calibrated on).
SCORE_BUCKETS = (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
BATCH_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
# Served versions whose per-version series are kept: the serving one and the one it replaced.
KEPT_VERSIONS = 2


class ScoreCounts:
    """Bucket counts and sum of one model's normalized scores; safe across threads."""

    __slots__ = ("_bounds", "_counts", "_lock", "_sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative); the last is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect_left(self._bounds, value)  # first bound >= value: Prometheus' `le`
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def observe_many(self, values: np.ndarray) -> None:
        if not values.size:
            return
        # Per bound, how many values it covers (`le`): a few vectorized passes, far cheaper than
        # a binary search per value (mispredicted branches) on a 50,000-row answer.
        covered = [np.count_nonzero(values <= bound) for bound in self._bounds]
        counts = np.diff([0, *covered, values.size])
        total = float(values.sum())
        with self._lock:
            for index, count in enumerate(counts.tolist()):
                self._counts[index] += count
            self._sum += total

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self._counts), self._sum


class ScoreHistogram:
    """A Prometheus histogram with a `model` label, fed whole score arrays (a collector)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.buckets = tuple(float(b) for b in buckets)
        self._children: dict[str, ScoreCounts] = {}
        self._lock = threading.Lock()
        registry.register(self)

    def labels(self, model: str) -> ScoreCounts:
        child = self._children.get(model)
        if child is None:
            with self._lock:
                child = self._children.setdefault(model, ScoreCounts(self.buckets))
        return child

    def remove(self, model: str) -> None:
        with self._lock:
            self._children.pop(model, None)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=["model"])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        with self._lock:
            children = sorted(self._children.items())
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for model, child in children:
            counts, total = child.snapshot()
            cumulative = np.cumsum(counts).tolist()
            family.add_metric([model], list(zip(bounds, cumulative, strict=True)), total)
        yield family


class ServingSeries:
    """The label children one served version records into (rows and anomalies by group,
    made at a group's first row; the model's latency, fallback and score children)."""

    def __init__(self, metrics: DetectorMetrics, model: str, version: int) -> None:
        self._rows = metrics.rows
        self._anomalies = metrics.anomalies
        self.model = model
        self.version = str(version)
        self.latency = metrics.inference_seconds.labels(model)
        self.fallback = metrics.fallback_rows.labels(model)
        self.scores = metrics.normalized_scores.labels(model)
        self.groups: dict[str, tuple] = {}

    def observe(self, scores: Scores) -> None:
        """Rows, anomalies, fallback rows and normalized scores of scored rows (a request, or
        a whole micro-batch at once), by group: no Python loop over rows."""
        names = scores.group_names
        flags = scores.is_anomaly  # empty for classifiers
        n = len(scores.row_groups)
        if n == 1:
            rows, anomalies = self.group(names[0] if len(names) == 1 else names[int(scores.row_groups[0])])
            rows.inc()
            if flags.size:
                if flags[0]:
                    anomalies.inc()
                self.scores.observe(float(scores.normalized[0]))
            if scores.fallback[0]:
                self.fallback.inc()
            return
        if flags.size:
            self.scores.observe_many(scores.normalized)
        if len(names) == 1:
            per_group, flagged = [n], [int(np.count_nonzero(flags))]
        else:
            per_group = np.bincount(scores.row_groups, minlength=len(names)).tolist()
            flagged = np.bincount(scores.row_groups[flags], minlength=len(names)).tolist() if flags.size else []
        for index, count in enumerate(per_group):
            if count:
                rows, anomalies = self.group(names[index])
                rows.inc(count)
                if flagged and flagged[index]:
                    anomalies.inc(flagged[index])
        fallback_count = int(np.count_nonzero(scores.fallback))
        if fallback_count:
            self.fallback.inc(fallback_count)

    def group(self, name: str) -> tuple:
        """(rows, anomalies) counters of a group; both exist from its first row, so the
        anomaly rate of a group that flagged nothing reads 0, not "no data"."""
        children = self.groups.get(name)
        if children is None:
            children = (
                self._rows.labels(self.model, name, self.version),
                self._anomalies.labels(self.model, name, self.version),
            )
            self.groups = {**self.groups, name: children}  # replaced, never mutated: readers on other threads
        return children


#: The similarity RPCs (the `method` label of the similarity metrics).
SIMILARITY_METHODS = ("Similar", "Clusters", "SuggestTags")
#: Why a version folder is not served (the `reason` label of oddity_detector_rejected_versions_total).
REJECTION_REASONS = ("incomplete", "unreadable", "load_failed")


class DetectorMetrics:
    def __init__(self, metrics_registry: CollectorRegistry) -> None:
        registry = metrics_registry
        self.rows = Counter("oddity_detector_rows", "Rows scored.", ["model", "group", "version"], registry=registry)
        self.anomalies = Counter(
            "oddity_detector_anomalies",
            "Rows flagged as anomalous (score above the threshold used).",
            ["model", "group", "version"],
            registry=registry,
        )
        self.fallback_rows = Counter(
            "oddity_detector_fallback_rows",
            "Rows scored by the 'all' group because their own group had no active model.",
            ["model"],
            registry=registry,
        )
        self.normalized_scores = ScoreHistogram(
            "oddity_detector_normalized_score",
            "Normalized scores of scored rows (share of the calibration's normal rows scoring lower).",
            SCORE_BUCKETS,
            registry,
        )
        self.expected_anomaly_rate = Gauge(
            "oddity_detector_expected_anomaly_rate",
            "Anomaly rate the serving version was calibrated for per group: (100 - threshold percentile) / 100.",
            ["model", "group"],
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
            "Requests per scoring call: a micro-batch of small requests, or 1 for a request scored alone.",
            buckets=BATCH_REQUEST_BUCKETS,
            registry=registry,
        )
        self.batch_rows = Histogram(
            "oddity_detector_batch_rows",
            "Rows per scoring call (one ONNX Runtime run per routed group in it).",
            buckets=BATCH_ROW_BUCKETS,
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
        self.similarity_requests = Counter(
            "oddity_detector_similarity_requests",
            "Similar, Clusters and SuggestTags answers, by whether the approximate index answered.",
            ["model", "method", "approximate"],
            registry=registry,
        )
        self.similarity_seconds = Histogram(
            "oddity_detector_similarity_seconds",
            "Time answering a similarity request (embedding a query included).",
            ["model", "method", "approximate"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Written under the lock, read without it (one dict lookup per request).
        self._series: dict[tuple[str, int], ServingSeries] = {}
        self._served: dict[str, list[int]] = {}  # model -> versions served, oldest first (at most KEPT_VERSIONS)
        self._rated_groups: dict[str, set[str]] = {}  # model -> groups with an expected-rate series
        self._lock = threading.Lock()

    def series(self, model: str, version: int) -> ServingSeries:
        """The cached label children of a served version (the request path's only lookup)."""
        found = self._series.get((model, version))
        if found is None:
            with self._lock:
                found = self._series.get((model, version))
                if found is None:
                    found = self._series[(model, version)] = ServingSeries(self, model, version)
        return found

    def observe_batch(self, requests: int, rows: int) -> None:
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)

    def model_seen(self, name: str) -> None:
        """Create a model's event counters at 0, so rate() and increase() see its first load
        failure, rejection or swap (a counter born at 1 shows no increase)."""
        for outcome in ("success", "failed"):
            self.loads.labels(name, outcome)
        for reason in REJECTION_REASONS:
            self.rejected_versions.labels(name, reason)
        self.swaps.labels(name)
        for method in SIMILARITY_METHODS:  # exact search: what every index can answer with
            self.similarity_requests.labels(name, method, "false")
            self.similarity_seconds.labels(name, method, "false")

    def observe_similarity(self, model: str, method: str, approximate: bool, seconds: float) -> None:
        """One answered similarity request (labels() per call: microseconds beside a search)."""
        flag = "true" if approximate else "false"
        self.similarity_requests.labels(model, method, flag).inc()
        self.similarity_seconds.labels(model, method, flag).observe(seconds)

    def serving_changed(self, model: str, manifest: manifest_pb2.ModelManifest | None) -> None:
        """A model's serving version changed (`manifest` None: nothing serves it now): its
        serving-version and expected-rate gauges follow, and per-version series older than
        the version it replaced are dropped."""
        with self._lock:
            self.serving_version.labels(model).set(manifest.version if manifest is not None else 0)
            rates = expected_anomaly_rates(manifest) if manifest is not None else {}
            for group in self._rated_groups.pop(model, set()) - set(rates):
                self.expected_anomaly_rate.remove(model, group)
            for group, rate in rates.items():
                self.expected_anomaly_rate.labels(model, group).set(rate)
            if rates:
                self._rated_groups[model] = set(rates)
            if manifest is None:
                return
            served = [v for v in self._served.get(model, []) if v != manifest.version] + [int(manifest.version)]
            self._served[model] = served[-KEPT_VERSIONS:]
            for key in [k for k in self._series if k[0] == model and k[1] not in self._served[model]]:
                series = self._series.pop(key)
                for group in series.groups:
                    self.rows.remove(model, group, series.version)
                    self.anomalies.remove(model, group, series.version)


def expected_anomaly_rates(manifest: manifest_pb2.ModelManifest) -> dict[str, float]:
    """Per active anomaly group, the share of normal rows its threshold was calibrated to flag."""
    if manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION:
        return {}
    rates = {}
    for group in bundle.active_groups(manifest):
        if group.threshold_percentile > 0:
            rates[group.name] = (100.0 - group.threshold_percentile) / 100.0
        elif group.calibration.expected_anomaly_rate > 0:
            rates[group.name] = group.calibration.expected_anomaly_rate
    return rates
