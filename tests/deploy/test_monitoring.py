"""Monitoring: the Prometheus Operator objects the overlays render (validated against the
operator's CRD schemas, offline), what they scrape and with which token, the rules
(deploy/prometheus/rules.yml: promtool's check and unit tests, what every alert carries, the
PrometheusRule carrying the same groups) and the Grafana dashboard (generated, shipped to the
Grafana sidecar, its queries filtered by namespace and naming metrics that exist)."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath
from types import ModuleType

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import crd_schemas, promql
from tests.deploy.prometheus import tool
from tests.deploy.services import REPO, SERVICES
from tests.deploy.test_k8s import container_env, deployment, main_container, matches, objects, render

MONITORED = ("overlays/dev", "overlays/prod")
monitored = pytest.mark.parametrize("kustomization", MONITORED)
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
RULES_TEST = PROMETHEUS / "rules_test.yml"
DASHBOARD = REPO / "deploy" / "k8s" / "components" / "monitoring" / "dashboards" / "oddity.json"
README = REPO / "deploy" / "k8s" / "README.md"
METRICS_DOC = REPO / "docs" / "metrics.md"
SEVERITIES = {"critical", "warning"}


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def rules_file() -> dict:
    return yaml.safe_load(RULES.read_text())


def rules() -> list[dict]:
    return [rule for group in rules_file()["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    return [(panel["title"], t["expr"]) for panel in dashboard()["panels"] for t in panel.get("targets", [])]


def crd_errors(obj: dict) -> list[str]:
    """What the operator's CRD schema and Kubernetes' ObjectMeta refuse in the object."""
    body = {key: value for key, value in obj.items() if key != "metadata"}
    validator = jsonschema.Draft4Validator(crd_schemas.schema(obj["kind"]))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    # ObjectMeta as Kubernetes defines it, checked on an object kubernetes-validate knows.
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    try:
        kubernetes_validate.validate(holder, kubernetes_validate.utils.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as exc:
        errors.append(f"metadata.{'.'.join(map(str, exc.path))}: {exc.message}")
    return errors


def monitor_of(kustomization: str, name: str) -> dict:
    (monitor,) = [m for m in objects(kustomization, "ServiceMonitor") if m["metadata"]["name"] == f"oddity-{name}"]
    return monitor


# --- the Prometheus Operator's objects ------------------------------------------------------


def test_the_overlays_monitor_and_the_base_needs_no_operator():
    assert not [o for o in render("base") if o["apiVersion"].startswith("monitoring.coreos.com/")]
    for kustomization in MONITORED:
        assert len(objects(kustomization, "ServiceMonitor")) == len(SERVICES)
        assert len(objects(kustomization, "PrometheusRule")) == 1


@monitored
def test_monitoring_objects_validate_against_the_operator_crds(kustomization):
    checked = [*objects(kustomization, "ServiceMonitor"), *objects(kustomization, "PrometheusRule")]
    errors = [f"{o['kind']}/{o['metadata']['name']}: {e}" for o in checked for e in crd_errors(o)]
    assert not errors, "\n".join(errors)
    for obj in checked:
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "oddity"


def test_the_crd_schemas_refuse_what_the_operator_refuses():
    """The validation above is not vacuous: fields the CRDs do not have, wrong types and values
    outside an enum are errors."""
    monitor = monitor_of("overlays/prod", "detector")
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["bearerToken"] = "inline"  # no such field
    assert any("bearerToken" in e for e in crd_errors(broken))
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["relabelings"][0]["action"] = "drop_label"
    assert any("drop_label" in e for e in crd_errors(broken))
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["interval"] = 30
    assert any("interval" in e for e in crd_errors(broken))
    broken = copy.deepcopy(monitor)
    broken["metadata"]["lables"] = {}
    assert any("lables" in e for e in crd_errors(broken))
    (rule,) = objects("overlays/prod", "PrometheusRule")
    broken = copy.deepcopy(rule)
    del broken["spec"]["groups"][0]["rules"][0]["expr"]
    assert any("expr" in e for e in crd_errors(broken))


@monitored
def test_service_monitors_scrape_each_metrics_port_with_the_metrics_token(kustomization):
    services = objects(kustomization, "Service")
    for name, service in SERVICES.items():
        monitor = monitor_of(kustomization, name)
        (endpoint,) = monitor["spec"]["endpoints"]
        pods = deployment(kustomization, service)["spec"]["template"]["metadata"]["labels"]
        selected = [s for s in services if matches(monitor["spec"]["selector"], s["metadata"]["labels"])]
        assert selected and all(matches({"matchLabels": s["spec"]["selector"]}, pods) for s in selected), name
        # One Service exposes the port (the headless replicas Service has none): scraped once.
        (scraped,) = [s for s in selected if endpoint["port"] in {p["name"] for p in s["spec"]["ports"]}]
        (port,) = [p for p in scraped["spec"]["ports"] if p["name"] == endpoint["port"]]
        container = main_container(kustomization, service)
        assert port["targetPort"] in {p["name"] for p in container["ports"]} and port["targetPort"] == "metrics"
        # The job label the rules and the dashboard select on.
        assert scraped["metadata"]["labels"][monitor["spec"]["jobLabel"]] == f"oddity-{name}"
        # Prometheus' `service` target label would push the services' own `service` label
        # (the gRPC service) aside.
        assert {"action": "labeldrop", "regex": "service"} in endpoint["relabelings"]
        assert endpoint["scheme"] == "http" and endpoint["path"] == "/metrics"
        # The bearer token: the very Secret key the pod reads as its metrics token file.
        token_file = PurePosixPath(container_env(kustomization, container)[service.env_prefix + "METRICS_TOKEN_FILE"])
        (mount,) = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == token_file.parent]
        volumes = deployment(kustomization, service)["spec"]["template"]["spec"]["volumes"]
        (volume,) = [v for v in volumes if v["name"] == mount["name"]]
        assert "items" not in volume["secret"]
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": volume["secret"]["secretName"], "key": token_file.name},
        }


@monitored
def test_the_prometheus_rule_carries_the_rules_file(kustomization):
    (rule,) = objects(kustomization, "PrometheusRule")
    assert rule["spec"]["groups"] == rules_file()["groups"]


def test_the_generated_files_are_current():
    for script in (PROMETHEUS / "prometheusrule.py", REPO / "deploy" / "grafana" / "dashboard.py"):
        assert load(script).main(["--check"]) == 0, f"run python {script.relative_to(REPO)}"


# --- the rules --------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess:
    command = [tool("promtool"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=PROMETHEUS, check=False)


def test_promtool_checks_the_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@pytest.mark.slow
def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_delay_a_severity_and_says_what_to_do():
    assert set(alerts()) == {
        "OddityTargetDown",
        "OddityDetectorNoModelServing",
        "OddityModelLoadFailed",
        "OddityModelVersionRejected",
        "OddityTrainingFailing",
        "OddityTrainingStale",
        "OddityAnomalyRateHigh",
        "OddityLatencyHigh",
        "OddityErrorRatioHigh",
        "OddityEmbedderNotReady",
    }
    for name, alert in alerts().items():
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), f"{name}: for"
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        for key in ("summary", "description"):
            assert "{{ $labels." in annotations[key], f"{name}: the {key} names what it is about"


def test_every_alert_is_tested_firing_and_not_firing():
    cases: dict[str, set[bool]] = {}
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], set()).add(bool(case["exp_alerts"]))
    assert {name: {True, False} for name in alerts()} == cases


def test_recording_rules_are_used():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used = " ".join([rule["expr"] for rule in rules()] + [expr for _, expr in dashboard_exprs()])
    for name in recorded:
        assert re.search(re.escape(name) + r"(?![\w:])", used.replace(f"record: {name}", "")), f"{name} is not used"


def test_the_readme_has_a_runbook_line_per_alert():
    text = README.read_text()
    for name in alerts():
        assert re.search(rf"^\| `{name}` \|", text, re.MULTILINE), f"deploy/k8s/README.md: no row for {name}"


# --- metric names -------------------------------------------------------------------------------


@cache
def documented() -> dict[str, str]:
    """docs/metrics.md's table: metric -> type."""
    table = {}
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            table[cells[0].strip("`")] = cells[1]
    return table


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: recording rules (with a colon) and the services'
    metrics (oddity_*, process_*), string literals left out."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    return set(re.findall(r"(?<![\w:])((?:[a-zA-Z_]\w*:[\w:]*)|(?:oddity|process)_\w+|up)(?![\w:(])", without_strings))


def test_rules_and_dashboard_name_metrics_that_exist():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    table = documented()
    unknown = []
    sources = [(rule.get("alert") or rule["record"], rule["expr"]) for rule in rules()] + dashboard_exprs()
    for where, expr in sources:
        for name in metric_names(expr):
            if name in recorded or name == "up" or name in table:
                continue
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if table.get(base) == "histogram":
                continue
            unknown.append(f"{where}: {name}")
    assert not unknown, "not in docs/metrics.md nor recorded:\n" + "\n".join(unknown)


# --- the dashboard ----------------------------------------------------------------------------


def test_dashboard_panels_fill_the_grid_without_overlapping():
    cells: dict[tuple[int, int], str] = {}
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(t["datasource"] == panel["datasource"] for t in panel["targets"])
            assert panel["description"], panel["title"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert [r.split(":")[0] for r in rows] == ["Requests", "Detector", "Trainer", "Embedder", "Processes"]


def test_dashboard_queries_use_the_variables():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "service", "model", "dataset"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["includeAll"] and variable["multi"], name
        # "All" must match series without the label too (no namespace outside Kubernetes).
        assert re.fullmatch(variable["allValue"], "" if name == "namespace" else "oddity-detector"), name
        promql.label_values(variable["query"]["query"])
    for title, expr in dashboard_exprs():
        selectors = re.findall(r"\{[^{}]*\}", re.sub(r"\{\{[^}]*\}\}", "", expr))
        assert selectors, f"{title}: {expr}"
        for selector in selectors:
            assert 'namespace=~"$namespace"' in selector, f"{title}: {selector} ignores the namespace"
        uses = set(re.findall(r"\$(\w+)", expr))
        assert uses <= {"namespace", "service", "model", "dataset", "__rate_interval"}, f"{title}: {uses}"


@monitored
def test_the_dashboard_reaches_the_grafana_sidecar(kustomization):
    (config_map,) = [c for c in objects(kustomization, "ConfigMap") if "grafana_dashboard" in c["metadata"]["labels"]]
    assert config_map["metadata"]["name"] == "oddity-grafana-dashboard", "one name: no copy left behind per change"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {"oddity.json": DASHBOARD.read_text()}
    # `kubectl apply` keeps the last applied object in a 256 KiB annotation.
    assert len(DASHBOARD.read_bytes()) < 200_000
    assert dashboard()["uid"] == "oddity-overview"
