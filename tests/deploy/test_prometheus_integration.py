"""The rules and the dashboard against a real Prometheus scraping the real services.

The three services run as child processes on 127.0.0.1 with a /metrics token, Prometheus
(Debian's package) scrapes them every second with that token and evaluates
deploy/prometheus/rules.yml every second. Traffic: Detect calls with anomalies in them, three
training runs (the detector loads version 1 and swaps to 2 and 3), Embed calls, refused calls, a
version that cannot load and a version folder left incomplete. Then every PromQL expression
must parse and return series: each recording rule, each operand of each alert (its expression
without the threshold comparisons, which hold only when something is wrong), each dashboard
query with its template variables substituted as Grafana would ("All": `.*`). The two broken
versions must make their alerts pending.

The dashboard is drawn from this run's data (deploy/grafana/render.py) into a temporary file;
ODDITY_RENDER_DASHBOARD=docs/dashboard.png draws it there instead, after a longer run (about 7
minutes: the rules' 5-minute windows fill)."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from PIL import Image

from oddity.oip import grpc_predict_v2_pb2 as oip
from oddity.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from oddity.v1 import detector_pb2, detector_pb2_grpc, embedder_pb2, embedder_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.deploy import promql
from tests.deploy.prometheus import PrometheusServer, tool
from tests.deploy.services import REPO
from tests.support import datasets, encoders, models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel
from tests.support.waiting import wait_for

RULES = REPO / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = REPO / "deploy" / "k8s" / "components" / "monitoring" / "dashboards" / "oddity.json"
RENDERER = REPO / "deploy" / "grafana" / "render.py"
TOKEN = "scrape-5e3b9c7d1a"
#: Grafana's $__rate_interval for a 1 s scrape, with room for scrapes that come late on a busy machine.
RATE_INTERVAL = "15s"
DATASET = "sensors"
FEATURES = 8
#: Where to draw the dashboard from this run's data (a path in the repository), if anywhere.
RENDER = os.environ.get("ODDITY_RENDER_DASHBOARD", "")
# The picture's run is longer than the test's (see LONG).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900 if RENDER else 300)]


@dataclass
class Stack:
    prometheus: PrometheusServer
    services: dict[str, ServiceProcess]
    started: float
    ended: float = 0.0
    picture: Path = Path()
    refused: set[grpc.StatusCode] = field(default_factory=set)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def start_services(root: Path, token_file: Path) -> dict[str, ServiceProcess]:
    common = ["--metrics-token-file", str(token_file)]
    vit = encoders.tiny_vit(root / "vit")
    embedder = ServiceProcess(
        "oddity.embedder.main",
        [
            "--cache-dir",
            str(root / "cache"),
            "--models",
            json.dumps({"vit": {"model_id": str(vit), "modality": "image"}}),
            "--default-model",
            "vit",
            *common,
        ],
        env={"HF_HUB_OFFLINE": "1"},
    )
    exporting = threading.Thread(target=embedder.start, kwargs={"timeout": 180})
    exporting.start()  # the export takes longest: the others start meanwhile
    detector = ServiceProcess(
        "oddity.detector.main",
        ["--model-repository", str(root / "models"), "--poll-interval-seconds", "0.5", *common],
    )
    trainer = ServiceProcess(
        "oddity.trainer.main",
        [
            "--data-volume",
            str(root / "data"),
            "--model-repository",
            str(root / "models"),
            "--detectors",
            "[]",  # set below, once the detector's port is known
            "--no-watch",
            *common,
        ],
    )
    services = {"detector": detector, "trainer": trainer, "embedder": embedder}
    try:
        detector.start()
        trainer.args[trainer.args.index("--detectors") + 1] = json.dumps([detector.target])
        trainer.start()
        exporting.join(timeout=200)
        if not embedder.port:
            raise RuntimeError("the embedder did not start:\n" + "\n".join(embedder.lines))
        embedder.wait_ready("oddity.v1.Embedder", timeout=180)  # exported and loaded
    except BaseException:
        exporting.join(timeout=200)
        for process in services.values():
            process.kill()
        raise
    return services


def prometheus_config(services: dict[str, ServiceProcess], credentials: Path) -> dict:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                # The job names the ServiceMonitors give (the Services' app.kubernetes.io/name).
                "job_name": f"oddity-{name}",
                "authorization": {"type": "Bearer", "credentials_file": str(credentials)},
                "static_configs": [{"targets": [f"127.0.0.1:{process.metrics_port}"]}],
            }
            for name, process in services.items()
        ],
    }


class Traffic(threading.Thread):
    """Detect calls every 50 ms (while `anomalous` is set, a fifth of their rows are anomalies),
    an Embed call and an Open Inference Protocol ModelInfer every 250 ms, and every 2 s a refused
    Detect: an unknown model or rows of the wrong width."""

    def __init__(self, detector: str, embedder: str, normal: np.ndarray, unusual: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.detector, self.embedder = detector, embedder
        self.calm = detect_request(DATASET, normal)
        self.drifting = detect_request(DATASET, np.vstack([normal[: -len(unusual)], unusual]))
        self.refusals = [detect_request("unknown", normal[:1]), detect_request(DATASET, normal[:, :3])]
        self.infer = oip.ModelInferRequest(model_name=DATASET)
        rows = normal.astype(np.float32)
        self.infer.inputs.add(name="input", datatype="FP32", shape=rows.shape).contents.fp32_contents.extend(
            rows.ravel()
        )
        self.anomalous = threading.Event()
        self.stopping = threading.Event()
        self.errors: list[str] = []
        self.refused: set[grpc.StatusCode] = set()
        self.calls = 0

    def run(self) -> None:
        image = embedder_pb2.EmbedRequest(items=[embedder_pb2.EmbedItem(image=png())] * 2)
        with channel(self.detector) as d, channel(self.embedder) as e:
            detect, embed = detector_pb2_grpc.DetectorStub(d), embedder_pb2_grpc.EmbedderStub(e)
            infer = oip_grpc.GRPCInferenceServiceStub(d)
            while not self.stopping.wait(0.05):
                self.calls += 1
                try:
                    detect.Detect(self.drifting if self.anomalous.is_set() else self.calm, timeout=10)
                    if self.calls % 5 == 0:
                        embed.Embed(image, timeout=30)
                        infer.ModelInfer(self.infer, timeout=10)
                except grpc.RpcError as exc:
                    self.errors.append(f"{exc.code()}: {exc.details()}")
                if self.calls % 40 == 0:
                    try:
                        detect.Detect(self.refusals[self.calls // 40 % 2], timeout=10)
                        self.errors.append("a refused call was answered")
                    except grpc.RpcError as exc:
                        self.refused.add(exc.code())


@dataclass(frozen=True)
class Schedule:
    """When things happen, in seconds from the first Detect call."""

    swaps: tuple[float, float]  # a forced training run each: versions 2 and 3
    drift: tuple[float, float]  # Detect calls carry anomalies between the two
    broken: float  # a version that cannot load and a version folder left incomplete
    end: float


#: The test's run: every query has data after about 40 s.
QUICK = Schedule(swaps=(8, 16), drift=(4, 30), broken=24, end=36)
#: For the picture: long enough for the rules' 5-minute windows to fill.
LONG = Schedule(swaps=(90, 210), drift=(150, 270), broken=240, end=400)


def train(stub: trainer_pb2_grpc.TrainerStub, force: bool) -> trainer_pb2.Job:
    job = stub.Train(trainer_pb2.TrainRequest(dataset=DATASET, force=force), timeout=30).job
    last = job
    for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=120):
        last = update.job
    assert last.state == trainer_pb2.JOB_STATE_SUCCEEDED, last.message
    return last


def serving(stub: detector_pb2_grpc.DetectorStub, model: str) -> int:
    listed = stub.ListModels(detector_pb2.ListModelsRequest(), timeout=10).models
    return next((m.serving_version for m in listed if m.name == model), 0)


def drive(stack: Stack, root: Path, schedule: Schedule) -> None:
    services = stack.services
    spec = {"sources": [{"path": "*.csv"}], "model": {"kind": "knn"}, "retrain": {"policy": "manual"}}
    datasets.write_dataset(root / "data", DATASET, spec, {"rows.csv": datasets.sensor_frame(300, d=FEATURES)})
    normal = datasets.sensor_frame(40, d=FEATURES, seed=2).to_numpy(np.float32)
    unusual = datasets.anomalies(datasets.sensor_frame(8, d=FEATURES, seed=3)).to_numpy(np.float32)
    events = sorted(
        [(at, "swap") for at in schedule.swaps]
        + [(schedule.drift[0], "drift"), (schedule.drift[1], "calm"), (schedule.broken, "broken")]
    )
    with channel(services["trainer"].target) as t, channel(services["detector"].target) as d:
        trainer, detector = trainer_pb2_grpc.TrainerStub(t), detector_pb2_grpc.DetectorStub(d)
        train(trainer, force=False)
        wait_for(lambda: serving(detector, DATASET) == 1, timeout=30, what="version 1 serving")
        traffic = Traffic(services["detector"].target, services["embedder"].target, normal, unusual)
        traffic.start()
        begin, version = time.monotonic(), 1
        try:
            for at, what in events:
                time.sleep(max(0.0, begin + at - time.monotonic()))
                if what == "swap":
                    version += 1
                    train(trainer, force=True)
                    wait_for(lambda v=version: serving(detector, DATASET) == v, timeout=30, what=f"version {version}")
                elif what == "drift":
                    traffic.anomalous.set()
                elif what == "calm":
                    traffic.anomalous.clear()
                else:
                    models.publish_simple(root / "models", "broken", models.timing_group(b"no onnx graph"), dimension=4)
                    (root / "models" / "broken" / "2").mkdir()
            time.sleep(max(0.0, begin + schedule.end - time.monotonic()))
        finally:
            traffic.stopping.set()
            traffic.join(timeout=30)
    assert traffic.calls > 100 and not traffic.errors, traffic.errors[:5]
    stack.refused = traffic.refused


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tool("prometheus")
    root = tmp_path_factory.mktemp("monitoring")
    (root / "data" / "datasets").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "prometheus").mkdir()
    token_file, credentials = root / "metrics-token", root / "prometheus" / "credentials"
    token_file.write_text(f"prometheus:{TOKEN}\n")
    credentials.write_text(TOKEN)
    services = start_services(root, token_file)
    prometheus = PrometheusServer(root / "prometheus", prometheus_config(services, credentials))
    try:
        prometheus.start()
        stack = Stack(prometheus, services, started=time.time())
        drive(stack, root, LONG if RENDER else QUICK)
        # Every service scraped after the last call, and the rules evaluated on it.
        last = time.time()
        wait_for(lambda: scraped_since(prometheus, last + 1), timeout=30, what="a scrape of every service")
        stack.ended = time.time()
        stack.picture = REPO / RENDER if RENDER else root / "dashboard.png"
        _load_renderer().draw(
            prometheus.url,
            json.loads(DASHBOARD.read_text()),
            stack.picture,
            stack.started,
            stack.ended,
            scrape_interval=1.0,
        )
        yield stack
    finally:
        prometheus.stop()
        for process in services.values():
            if process.proc is not None and process.proc.poll() is None:
                try:
                    process.terminate(timeout=30)
                except Exception:
                    process.kill()


def scraped_since(prometheus: PrometheusServer, moment: float) -> bool:
    """Every service scraped successfully after `moment` (unix seconds)."""
    scrapes = prometheus.query("timestamp(up == 1)")
    return len(scrapes) == 3 and all(float(s["value"][1]) > moment for s in scrapes)


def _load_renderer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("oddity_dashboard_render", RENDERER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_values() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD.read_text())
    values = {v["name"]: v["allValue"] for v in dashboard["templating"]["list"] if v["type"] == "query"}
    values["__rate_interval"] = RATE_INTERVAL
    return values


def test_the_scrapes_present_the_metrics_token(stack):
    targets = stack.prometheus.api("targets", state="active")["activeTargets"]
    assert sorted(t["labels"]["job"] for t in targets) == ["oddity-detector", "oddity-embedder", "oddity-trainer"]
    assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]
    assert stack.refused == {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}


def test_every_recording_rule_records_series(stack):
    empty = []
    for rule in rules():
        if "record" in rule and not (stack.prometheus.query(rule["expr"]) and stack.prometheus.query(rule["record"])):
            empty.append(rule["record"])
    assert not empty, f"recording rules without data: {empty}"


def test_every_alert_parses_and_its_operands_return_series(stack):
    empty = []
    for rule in rules():
        if "alert" not in rule:
            continue
        stack.prometheus.query(rule["expr"])  # parses; empty while nothing is wrong
        parts = promql.operands(rule["expr"])
        assert parts, rule["alert"]
        empty += [f"{rule['alert']}: {part}" for part in parts if not stack.prometheus.query(part)]
    assert not empty, "alert operands without data:\n" + "\n".join(empty)


def test_every_dashboard_query_returns_series(stack):
    values = dashboard_values()
    empty, count = [], 0
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            count += 1
            expr = promql.substitute(target["expr"], values)
            assert "$" not in expr, f"{panel['title']}: a variable is left in {expr}"
            if not stack.prometheus.query(expr):
                empty.append(f"{panel['title']} ({target['refId']}): {expr}")
    assert count >= 30
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_the_scoring_panels_show_model_infer_beside_detect(stack):
    values = dashboard_values()
    panels = [p for p in json.loads(DASHBOARD.read_text())["panels"] if "ModelInfer" in json.dumps(p.get("targets"))]
    assert len(panels) == 3
    for panel in panels:
        for target in panel["targets"]:
            series = stack.prometheus.query(promql.substitute(target["expr"], values))
            methods = {s["metric"]["method"] for s in series}
            assert methods == {"Detect", "ModelInfer"}, f"{panel['title']} ({target['refId']}): {methods}"


def test_the_dashboard_variables_find_their_values(stack):
    values = dashboard_values()
    found = {}
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector, label = promql.label_values(variable["query"]["query"])
        found[variable["name"]] = stack.prometheus.api(
            f"label/{label}/values", **{"match[]": promql.substitute(selector, values)}
        )
    # Outside Kubernetes no series has a namespace: "All" (.*) is what the panels use.
    assert found == {
        "namespace": [],
        "service": ["oddity-detector", "oddity-embedder", "oddity-trainer"],
        "model": ["broken", DATASET],
        "dataset": [DATASET],
    }


def test_broken_versions_make_their_alerts_pending(stack):
    active = {
        (alert["labels"]["alertname"], alert["labels"].get("model"), alert["labels"].get("reason"))
        for alert in stack.prometheus.api("alerts")["alerts"]
    }
    assert ("OddityModelLoadFailed", "broken", None) in active
    assert ("OddityModelVersionRejected", "broken", "incomplete") in active
    assert not any(name == "OddityModelLoadFailed" and model == DATASET for name, model, _ in active)


def test_the_dashboard_draws_from_this_prometheus(stack):
    with Image.open(stack.picture) as picture:
        assert picture.format == "PNG"
        assert picture.width >= 1500 and picture.height > picture.width
