"""Oddity's Grafana dashboard, as code. Writes
deploy/k8s/components/monitoring/dashboards/oddity.json, which the monitoring component ships
as a ConfigMap for Grafana's dashboard sidecar and which can be imported by hand.

    python deploy/grafana/dashboard.py          # after editing this file
    python deploy/grafana/dashboard.py --check  # fails when the JSON is stale

Rows: requests (all services), detector, trainer, embedder, processes. Template variables:
`datasource`, `namespace`, `service` (the scrape job: oddity-detector, ...), `model` (detector
series) and `dataset` (trainer series); "All" is the regex `.*`, which also matches series
without the label (Prometheus outside Kubernetes sets no `namespace`). Every selector filters
on `namespace=~"$namespace"`. The gRPC, anomaly-rate and embedder throughput panels read the
recording rules of deploy/prometheus/rules.yml (5-minute windows, as the alerts see them);
the rest compute over Grafana's `$__rate_interval`, among them the detector's scoring panels,
which show the Open Inference Protocol's ModelInfer beside oddity.v1's Detect.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parents[1] / "k8s" / "components" / "monitoring" / "dashboards" / "oddity.json"
UID = "oddity-overview"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
OWN_RPCS = 'service=~"oddity[.]v1[.].+"'
#: Scoring through either protocol: oddity.v1's Detect and the Open Inference Protocol's ModelInfer
#: (inference.GRPCInferenceService, which the recording rules leave out: read from the raw series).
SCORING_RPCS = ('service=~"oddity[.]v1[.]Detector|inference[.]GRPCInferenceService"', 'method=~"Detect|ModelInfer"')
SERVER_ERRORS = 'code=~"INTERNAL|UNKNOWN|DATA_LOSS|UNAVAILABLE|DEADLINE_EXCEEDED"'


def selector(metric: str, *matchers: str) -> str:
    """A series selector, always filtered by the namespace variable."""
    return f"{metric}{{{', '.join((NS, *matchers))}}}"


class Layout:
    """Panels placed left to right on Grafana's 24-column grid, rows below each other."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "id": len(self.panels) + 1,
                "panels": [],
            }
        )
        self.y += 1

    def add(self, panel: dict[str, Any], width: int, height: int = 8) -> None:
        if self.x + width > 24:
            self._newline()
        panel["id"] = len(self.panels) + 1
        panel["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _newline(self) -> None:
        self.y += self.row_height
        self.x = 0
        self.row_height = 0


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": True, "refId": ref}


def timeseries(
    title: str,
    description: str,
    queries: list[tuple[str, str]],
    unit: str,
    *,
    bars: bool = False,
    dashed: tuple[str, ...] = (),
    stack: bool = False,
) -> dict[str, Any]:
    """A time series panel; `dashed`: refIds drawn as dashed lines (reference values)."""
    refs = [chr(ord("A") + i) for i in range(len(queries))]
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 40 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "axisSoftMin": 0,
    }
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    overrides = [
        {
            "matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "custom.fillOpacity", "value": 0},
            ],
        }
        for ref in dashed
    ]
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": overrides},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [target(expr, legend, ref) for (expr, legend), ref in zip(queries, refs, strict=True)],
    }


def stat(title: str, description: str, queries: list[tuple[str, str]], unit: str) -> dict[str, Any]:
    refs = [chr(ord("A") + i) for i in range(len(queries))]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "value_and_name",
            "orientation": "auto",
        },
        "targets": [target(expr, legend, ref) for (expr, legend), ref in zip(queries, refs, strict=True)],
    }


def query_variable(name: str, label: str, query: str, *, all_value: str = ".*") -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-variable"},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "allValue": all_value,
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "sort": 1,
        "hide": 0,
    }


def quantile(q: float, bucket_selector: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({bucket_selector}[$__rate_interval])))"


def requests_row(layout: Layout) -> None:
    layout.row("Requests: the services' own RPCs (health checks and reflection left out)")
    rpc = ('job=~"$service"',)
    layout.add(
        timeseries(
            "Request rate",
            "Calls per second by service and method (5-minute rate, recording rule).",
            [
                (
                    "sum by (job, method) ("
                    + selector("namespace_job_service_method:oddity_grpc_requests:rate5m", *rpc)
                    + ")",
                    "{{job}} {{method}}",
                )
            ],
            "reqps",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Server error ratio",
            "Share of calls ending INTERNAL, UNKNOWN, DATA_LOSS, UNAVAILABLE or DEADLINE_EXCEEDED "
            "(the caller's own mistakes are not errors here). Alert: above 5% for 10 minutes.",
            [
                (
                    "max by (job, method) ("
                    + selector("namespace_job_service_method:oddity_grpc_server_errors:ratio_rate5m", *rpc)
                    + ")",
                    "{{job}} {{method}}",
                )
            ],
            "percentunit",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Calls not OK, by code",
            "Calls per second ending with a code other than OK, the callers' mistakes included "
            "(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAUTHENTICATED, ...).",
            [
                (
                    "sum by (job, method, code) ("
                    + selector("namespace_job_service_method_code:oddity_grpc_requests:rate5m", *rpc, 'code!="OK"')
                    + ")",
                    "{{job}} {{method}} {{code}}",
                )
            ],
            "reqps",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Latency p99",
            "99th percentile of the server-side handling time of unary calls (streams left out). "
            "Alert: Detect above 0.5 s, DetectImages and Embed above 5 s, for 10 minutes.",
            [
                (
                    "max by (job, method) ("
                    + selector("namespace_job_service_method:oddity_grpc_request_duration_seconds:p99_rate5m", *rpc)
                    + ")",
                    "{{job}} {{method}}",
                )
            ],
            "s",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Latency p50",
            "Median server-side handling time of unary calls.",
            [
                (
                    "max by (job, method) ("
                    + selector("namespace_job_service_method:oddity_grpc_request_duration_seconds:p50_rate5m", *rpc)
                    + ")",
                    "{{job}} {{method}}",
                )
            ],
            "s",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Calls in flight",
            "Calls being handled now (streams included).",
            [
                (
                    "sum by (job, method) (" + selector("oddity_grpc_requests_in_flight", *rpc, OWN_RPCS) + ")",
                    "{{job}} {{method}}",
                )
            ],
            "short",
        ),
        8,
    )


def detector_row(layout: Layout) -> None:
    layout.row("Detector")
    scoring_panels(layout)
    model = 'model=~"$model"'
    layout.add(
        timeseries(
            "Anomaly rate against the calibrated rate",
            "Share of rows flagged per model and group (solid), and the rate the serving version was "
            "calibrated for (dashed: 100 - threshold percentile). Alert: above 3 times the calibrated "
            "rate for 10 minutes.",
            [
                (
                    "max by (model, group) ("
                    + selector("namespace_job_model_group:oddity_detector_anomalies:ratio_rate5m", model)
                    + ")",
                    "{{model}}/{{group}} observed",
                ),
                (
                    "max by (model, group) ("
                    + selector("namespace_job_model_group:oddity_detector_expected_anomaly_rate:max", model)
                    + ")",
                    "{{model}}/{{group}} calibrated",
                ),
            ],
            "percentunit",
            dashed=("B",),
        ),
        12,
        9,
    )
    layout.add(
        timeseries(
            "Rows scored",
            "Rows per second by model and group (the group that scored them: fallback rows count under all).",
            [
                (
                    "sum by (model, group) ("
                    + selector("namespace_job_model_group:oddity_detector_rows:rate5m", model)
                    + ")",
                    "{{model}}/{{group}}",
                )
            ],
            "short",
        ),
        12,
        9,
    )
    layout.add(
        timeseries(
            "Serving version",
            "The version each detector replica serves per model (0: none), and the trainer's live version "
            "(dashed): a replica below it is pinned or has not loaded it.",
            [
                (selector("oddity_detector_serving_version", model), "{{model}} {{instance}}"),
                ("max by (model) (" + selector("oddity_trainer_live_version", model) + ")", "{{model}} live"),
            ],
            "none",
            dashed=("B",),
        ),
        8,
    )
    layout.add(
        timeseries(
            "Swaps, loads and rejected versions",
            "Serving-version swaps, version loads by outcome and version folders refused (by reason).",
            [
                (
                    "sum by (model) (increase("
                    + selector("oddity_detector_swaps_total", model)
                    + "[$__rate_interval]))",
                    "{{model}} swaps",
                ),
                (
                    "sum by (model, outcome) (increase("
                    + selector("oddity_detector_model_loads_total", model)
                    + "[$__rate_interval]))",
                    "{{model}} loads {{outcome}}",
                ),
                (
                    "sum by (model, reason) (increase("
                    + selector("oddity_detector_rejected_versions_total", model)
                    + "[$__rate_interval]))",
                    "{{model}} rejected {{reason}}",
                ),
            ],
            "short",
            bars=True,
        ),
        8,
    )
    layout.add(
        timeseries(
            "Scoring time p99",
            "99th percentile of the time scoring a request per model (routing, ONNX Runtime, "
            "normalization, the wait in its micro-batch), and of loading a version.",
            [
                (
                    quantile(0.99, selector("oddity_detector_inference_seconds_bucket", model), "model"),
                    "{{model}} scoring",
                ),
                (
                    quantile(0.99, selector("oddity_detector_model_load_seconds_bucket", model), "model"),
                    "{{model}} load",
                ),
            ],
            "s",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Rows above the 99th percentile",
            "Share of scored rows more unusual than 99% of the normal rows the model was calibrated on.",
            [
                (
                    "1 - sum by (model) (rate("
                    + selector("oddity_detector_normalized_score_bucket", model, 'le="0.99"')
                    + "[$__rate_interval])) / sum by (model) (rate("
                    + selector("oddity_detector_normalized_score_count", model)
                    + "[$__rate_interval]))",
                    "{{model}}",
                )
            ],
            "percentunit",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Micro-batches",
            "Requests and rows per scoring call (mean): concurrent small requests share one ONNX Runtime run.",
            [
                (
                    "sum(rate(" + selector("oddity_detector_batch_requests_sum") + "[$__rate_interval])) / "
                    "sum(rate(" + selector("oddity_detector_batch_requests_count") + "[$__rate_interval]))",
                    "requests per call",
                ),
                (
                    "sum(rate(" + selector("oddity_detector_batch_rows_sum") + "[$__rate_interval])) / "
                    "sum(rate(" + selector("oddity_detector_batch_rows_count") + "[$__rate_interval]))",
                    "rows per call",
                ),
            ],
            "short",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Fallback rows and draining versions",
            "Rows scored by the all group because their own group has no active model, and retired "
            "versions still finishing requests.",
            [
                (
                    "sum by (model) (rate("
                    + selector("oddity_detector_fallback_rows_total", model)
                    + "[$__rate_interval]))",
                    "{{model}} fallback rows/s",
                ),
                ("sum(" + selector("oddity_detector_draining_versions") + ")", "draining versions"),
            ],
            "short",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Similarity requests",
            "Similar, Clusters and SuggestTags answered per second, by model and method, and by whether "
            "the version's approximate (HNSW) index answered or exact search did.",
            [
                (
                    "sum by (model, method, approximate) (rate("
                    + selector("oddity_detector_similarity_requests_total", model)
                    + "[$__rate_interval]))",
                    "{{model}} {{method}} approximate={{approximate}}",
                )
            ],
            "reqps",
        ),
        12,
    )
    layout.add(
        timeseries(
            "Similarity latency p99",
            "99th percentile of the time answering a similarity request (embedding an image or text query "
            "included), by model and method.",
            [
                (
                    quantile(
                        0.99,
                        selector("oddity_detector_similarity_seconds_bucket", model),
                        "model, method",
                    ),
                    "{{model}} {{method}}",
                )
            ],
            "s",
        ),
        12,
    )


def scoring_panels(layout: Layout) -> None:
    """Rate, server errors and duration of Detect and ModelInfer side by side, per method."""
    job = 'job=~"$service"'
    requests = selector("oddity_grpc_requests_total", job, *SCORING_RPCS)
    errors = selector("oddity_grpc_requests_total", job, *SCORING_RPCS, SERVER_ERRORS)
    buckets = selector("oddity_grpc_request_duration_seconds_bucket", job, *SCORING_RPCS)
    calls = f"sum by (method) (rate({requests}[$__rate_interval]))"
    layout.add(
        timeseries(
            "Scoring calls: Detect and ModelInfer",
            "Calls per second of oddity.v1's Detect and of the Open Inference Protocol's ModelInfer "
            "(inference.GRPCInferenceService), by final code.",
            [
                (
                    f"sum by (method, code) (rate({requests}[$__rate_interval]))",
                    "{{method}} {{code}}",
                )
            ],
            "reqps",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Scoring server error ratio",
            "Share of Detect and ModelInfer calls ending INTERNAL, UNKNOWN, DATA_LOSS, UNAVAILABLE or "
            "DEADLINE_EXCEEDED (0 while none fail).",
            [
                (
                    f"(sum by (method) (rate({errors}[$__rate_interval])) or 0 * {calls}) / {calls}",
                    "{{method}}",
                )
            ],
            "percentunit",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Scoring latency",
            "Server-side handling time of Detect and ModelInfer: 99th percentile and median.",
            [
                (quantile(0.99, buckets, "method"), "{{method}} p99"),
                (quantile(0.5, buckets, "method"), "{{method}} p50"),
            ],
            "s",
        ),
        8,
    )


def trainer_row(layout: Layout) -> None:
    layout.row("Trainer")
    dataset = 'dataset=~"$dataset"'
    layout.add(
        timeseries(
            "Training runs",
            "Jobs ended, by outcome: succeeded (published), rejected (refused by validation), failed, skipped.",
            [
                (
                    "sum by (dataset, outcome) (increase("
                    + selector("oddity_trainer_jobs_total", dataset)
                    + "[$__rate_interval]))",
                    "{{dataset}} {{outcome}}",
                )
            ],
            "short",
            bars=True,
        ),
        8,
    )
    layout.add(
        timeseries(
            "Run duration",
            "Mean wall time of the jobs that ended in the past hour, by outcome.",
            [
                (
                    "sum by (dataset, outcome) (increase("
                    + selector("oddity_trainer_job_seconds_sum", dataset)
                    + "[1h])) / sum by (dataset, outcome) (increase("
                    + selector("oddity_trainer_job_seconds_count", dataset)
                    + "[1h]))",
                    "{{dataset}} {{outcome}}",
                )
            ],
            "s",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Since the last success",
            "Time since each dataset's last published run. A dataset whose data does not change is not "
            "retrained; the alert fires after a day only while its runs fail.",
            [
                (
                    "time() - max by (dataset) ("
                    + selector("oddity_trainer_last_success_timestamp_seconds", dataset)
                    + ")",
                    "{{dataset}}",
                )
            ],
            "s",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Failures in a row, running jobs",
            "Failed runs in a row per dataset (alert: 3 or more for 15 minutes), jobs running now and "
            "dataset folders whose spec or data is invalid.",
            [
                (
                    "max by (dataset) (" + selector("oddity_trainer_consecutive_failures", dataset) + ")",
                    "{{dataset}} failures",
                ),
                ("sum(" + selector("oddity_trainer_jobs_running") + ")", "running"),
                ("max(" + selector("oddity_trainer_invalid_datasets") + ")", "invalid datasets"),
            ],
            "short",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Rows of the last run",
            "Rows loaded by each dataset's latest run (malformed rows dropped).",
            [("max by (dataset) (" + selector("oddity_trainer_last_run_rows", dataset) + ")", "{{dataset}}")],
            "short",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Validation of the live version",
            "Calibrated and cross-validated anomaly rates of each dataset's live version, per group: new "
            "normal rows should be flagged at about the cross-validated rate.",
            [
                (
                    "max by (dataset, group, metric) ("
                    + selector(
                        "oddity_trainer_live_validation",
                        dataset,
                        'metric=~"expected_anomaly_rate|cross_validated_anomaly_rate"',
                    )
                    + ")",
                    "{{dataset}}/{{group}} {{metric}}",
                )
            ],
            "percentunit",
        ),
        8,
    )


def embedder_row(layout: Layout) -> None:
    # Embedder models (vit, minilm, ...) are not the detector's: the model variable does not apply.
    layout.row("Embedder")
    layout.add(
        timeseries(
            "Items embedded",
            "Images and texts embedded per second, by model.",
            [
                (
                    "sum by (model, kind) (" + selector("namespace_job_model_kind:oddity_embedder_items:rate5m") + ")",
                    "{{model}} {{kind}}",
                )
            ],
            "short",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Batch size",
            "Items per ONNX Runtime call after dynamic batching: mean and 90th percentile.",
            [
                (
                    "sum by (model) (rate("
                    + selector("oddity_embedder_batch_items_sum")
                    + "[$__rate_interval])) / sum by (model) (rate("
                    + selector("oddity_embedder_batch_items_count")
                    + "[$__rate_interval]))",
                    "{{model}} mean",
                ),
                (quantile(0.9, selector("oddity_embedder_batch_items_bucket"), "model"), "{{model}} p90"),
            ],
            "short",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Queue wait",
            "Time from a request's items entering the batcher's queue to their batch's ONNX call: the "
            "batching delay plus waiting for earlier batches.",
            [
                (quantile(0.5, selector("oddity_embedder_queue_wait_seconds_bucket"), "model"), "{{model}} p50"),
                (quantile(0.99, selector("oddity_embedder_queue_wait_seconds_bucket"), "model"), "{{model}} p99"),
            ],
            "s",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Inference and preprocessing p99",
            "ONNX Runtime time per batch, and preprocessing per request (decoding images) and per batch "
            "(tokenizing, stacking).",
            [
                (quantile(0.99, selector("oddity_embedder_inference_seconds_bucket"), "model"), "{{model}} inference"),
                (
                    quantile(0.99, selector("oddity_embedder_preprocess_seconds_bucket"), "model, stage"),
                    "{{model}} preprocess {{stage}}",
                ),
            ],
            "s",
        ),
        16,
    )
    layout.add(
        stat(
            "Models loaded",
            "Embedder replicas serving each model. Alert: a replica up for 15 minutes without any.",
            [("sum by (model) (" + selector("oddity_embedder_model_loaded") + ")", "{{model}}")],
            "none",
        ),
        8,
    )


def processes_row(layout: Layout) -> None:
    layout.row("Processes")
    job = 'job=~"$service"'
    layout.add(
        timeseries(
            "CPU",
            "CPU time per second (cores) of each service process.",
            [
                (
                    "sum by (job, instance) (rate("
                    + selector("process_cpu_seconds_total", job)
                    + "[$__rate_interval]))",
                    "{{job}} {{instance}}",
                )
            ],
            "short",
        ),
        12,
    )
    layout.add(
        timeseries(
            "Resident memory",
            "Resident memory of each service process (a detector holds the old and the new version during a swap).",
            [
                (
                    "sum by (job, instance) (" + selector("process_resident_memory_bytes", job) + ")",
                    "{{job}} {{instance}}",
                )
            ],
            "bytes",
        ),
        12,
    )


def build() -> dict[str, Any]:
    layout = Layout()
    requests_row(layout)
    detector_row(layout)
    trainer_row(layout)
    embedder_row(layout)
    processes_row(layout)
    jobs = 'job=~"oddity-(detector|embedder|trainer)"'
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": "Oddity's detector, trainer and embedder: requests, anomaly rates, training, embedding.",
        "editable": True,
        "graphTooltip": 1,
        "links": [],
        "panels": layout.panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["oddity"],
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "includeAll": False,
                    "multi": False,
                    "options": [],
                    "refresh": 1,
                    "regex": "",
                },
                query_variable("namespace", "Namespace", f"label_values(up{{{jobs}}}, namespace)"),
                query_variable(
                    "service",
                    "Service",
                    f'label_values(up{{{jobs}, namespace=~"$namespace"}}, job)',
                    all_value="oddity-.+",
                ),
                query_variable(
                    "model", "Model", 'label_values(oddity_detector_model_loads_total{namespace=~"$namespace"}, model)'
                ),
                query_variable(
                    "dataset", "Dataset", 'label_values(oddity_trainer_live_version{namespace=~"$namespace"}, dataset)'
                ),
            ]
        },
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": "Oddity",
        "uid": UID,
        "version": 1,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the committed JSON is stale")
    args = parser.parse_args(argv)
    wanted = render()
    if args.check:
        if not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != wanted:
            print(f"{TARGET} is stale: run python deploy/grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
