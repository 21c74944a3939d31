"""`oddity up` as a real process on a temporary folder and free ports: a dataset dropped into
its datasets/ is trained and served, `oddity score` scores it row for row as Detect does,
SIGTERM stops every service and exits 0 with no child left; a service killed with SIGKILL
is reported with its last lines, the other is stopped and the exit code is 1; a killed
`oddity up` leaves no service behind; TLS and token options reach every service, which call
each other with them; a second `oddity up` on the folder of a running one, or on a port in
use, says so in one line and starts nothing; `--prometheus` runs a Prometheus on the stack;
`--model` is kept in the folder's stack.json and served again by an `oddity up` without it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
import trustme

from oddity.cli.demo_encoder import small_vit
from oddity.cli.exit_codes import IN_USE
from oddity.cli.local_prometheus import LocalPrometheus
from oddity.client import DetectorClient, EmbedderClient, TrainerClient, Unavailable
from tests.client.conftest import UpProcess, invoke, start_up, with_text_model_exported
from tests.support import datasets
from tests.support.certificates import identity
from tests.support.waiting import wait_for

# `oddity up` as a real process with its services (15 to 50 s a test).
pytestmark = pytest.mark.slow


@pytest.fixture
def up_process(tmp_path) -> Iterator[UpProcess]:
    up = start_up(tmp_path / "stack", "--no-embedder")
    yield up
    up.kill()


def test_a_service_that_dies_is_reported_and_the_others_are_stopped(up_process):
    up = up_process
    wait_for(lambda: up.serving("detector") and up.serving("trainer"), timeout=120, what="both services serving")
    children = up.children()
    trainer_port = up.serving("trainer")["port"]

    children["oddity.trainer.main"].send_signal(signal.SIGKILL)
    assert up.proc.wait(timeout=60) == 1
    assert [name for name, child in children.items() if child.is_running()] == []
    stderr = "\n".join(up.stderr)
    assert "error: the trainer was killed by SIGKILL" in stderr
    report = stderr[stderr.index("error: the trainer was killed by SIGKILL") :]
    assert "its last" in report
    assert f"port={trainer_port}" in report  # the trainer's own lines, its "serving" line among them
    assert "stopping the other services" in report
    detector_log = (up.folder / "logs" / "detector.log").read_text().splitlines()
    assert json.loads(detector_log[-1])["event"] == "stopped"


def ended(process: psutil.Process) -> bool:
    """Exited (a zombie that no one has reaped yet runs no code either)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_services_do_not_outlive_a_killed_oddity_up(up_process):
    up = up_process
    wait_for(lambda: up.serving("detector") and up.serving("trainer"), timeout=120, what="both services serving")
    children = up.children()
    assert sorted(children) == ["oddity.detector.main", "oddity.trainer.main"]

    up.proc.kill()  # no chance to stop them: the kernel tells them (PR_SET_PDEATHSIG)
    up.proc.wait(timeout=30)
    wait_for(lambda: all(ended(c) for c in children.values()), timeout=60, what="the services to end")


def test_tls_and_tokens_reach_every_service_and_their_calls_to_each_other(tmp_path, cli):
    ca = trustme.CA()
    stack_tls = identity(tmp_path / "stack-tls", ca, "localhost", "127.0.0.1")
    client_tls = identity(tmp_path / "client-tls", ca, "cli.example")
    cert, key, ca_file = stack_tls.cert, stack_tls.key, stack_tls.ca
    client_cert, client_key = client_tls.cert, client_tls.key
    (tmp_path / "read-tokens").write_text("cli:r3ad-token\n")
    (tmp_path / "admin-tokens").write_text("ops:adm1n-token\n")
    (tmp_path / "admin-token").write_text("ops:adm1n-token\n")
    (tmp_path / "read-token").write_text("cli:r3ad-token\n")
    up = start_up(
        tmp_path / "stack",
        "--no-embedder",
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-file", str(ca_file)),
        "--tls-client-auth",
        *("--read-tokens-file", str(tmp_path / "read-tokens"), "--admin-tokens-file", str(tmp_path / "admin-tokens")),
        *("--token-file", str(tmp_path / "admin-token")),
    )
    try:
        wait_for(lambda: any("Oddity is up" in line for line in up.stderr), timeout=120, what="the welcome panel")
        for service in ("detector", "trainer"):
            serving = up.serving(service)
            assert (serving["tls"], serving["mutual_tls"], serving["tokens"]) == (True, True, True), service
        spec = {"sources": [{"path": "*.csv"}], "model": {"kind": "knn"}, "retrain": {"debounce_seconds": 0.2}}
        datasets.write_dataset(up.folder, "sensors", spec, {"readings.csv": datasets.sensor_frame(200, 4)})

        def told_to_load() -> dict | None:  # the trainer's LoadModel: over mutual TLS, with the admin token
            audits = [e for e in up.events if e.get("event") == "audit" and e.get("rpc") == "LoadModel"]
            return audits[0] if audits else None

        audit = wait_for(told_to_load, timeout=180, what="the trainer telling the detector to load")
        assert (audit["service"], audit["principal"], audit["code"]) == ("detector", "ops", "OK")
        detector = f"localhost:{up.serving('detector')['port']}"
        tls = ["--tls-ca-file", ca_file, "--tls-cert-file", client_cert, "--tls-key-file", client_key]
        listed = invoke(cli, "models", "--json", "--detector", detector, *tls, "--token-file", tmp_path / "read-token")
        assert listed.exit_code == 0, listed.stderr
        assert [(m["name"], m["serving_version"]) for m in json.loads(listed.stdout)] == [("sensors", 1)]
        refused = invoke(cli, "models", "--detector", detector, *tls)
        assert refused.exit_code == 1
        assert refused.stderr == f"error: detector at {detector}: UNAUTHENTICATED: a valid bearer token is required\n"

        up.proc.send_signal(signal.SIGTERM)
        assert up.proc.wait(timeout=60) == 0
    finally:
        up.kill()


def up_once(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`oddity up` on `folder` that is expected to stop by itself."""
    return subprocess.run(
        [sys.executable, "-m", "oddity.cli.main", "up", "--data-volume", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_up_on_a_port_in_use_names_it_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = up_once(
            tmp_path / "stack",
            "--no-embedder",
            *("--detector-port", str(port), "--trainer-port", "0", "--metrics-port-base", "0"),
        )

    assert result.returncode == IN_USE
    assert result.stderr == (
        f"error: port {port} is in use (another `oddity up`? stop it with Ctrl-C, or pass --detector-port)\n"
    )
    assert not (tmp_path / "stack" / "logs").exists()


PROMETHEUS = LocalPrometheus.installed()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RunningStack:
    up: UpProcess
    prometheus_port: int


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory) -> Iterator[RunningStack]:
    """One `oddity up --no-embedder --prometheus` (when Debian's prometheus is installed) for
    the tests below, in file order: Prometheus scrapes it, a second `oddity up` on its folder
    leaves it alone, a dropped dataset is served, and SIGTERM stops it all (one stack start
    instead of four)."""
    port = _free_port()
    prometheus = ("--prometheus", "--prometheus-port", str(port)) if PROMETHEUS else ()
    up = start_up(tmp_path_factory.mktemp("up") / "stack", "--no-embedder", *prometheus)
    try:
        wait_for(lambda: "Oddity is up" in up.stderr_text(), timeout=120, what="the welcome panel")
        yield RunningStack(up, port)
    finally:
        up.kill()


@pytest.mark.skipif(not PROMETHEUS, reason="Debian's prometheus is not installed")
def test_prometheus_scrapes_the_stack(running_stack):
    """`oddity up --prometheus`: a real Prometheus whose targets are the services' /metrics,
    up, with the recording rules the dashboard reads (it stops with the stack: the last test)."""
    up, port = running_stack.up, running_stack.prometheus_port
    wait_for(lambda: f"prometheus http://127.0.0.1:{port}" in up.stderr_text(), timeout=120, what="prometheus")

    def targets() -> dict[str, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as response:
                active = json.load(response)["data"]["activeTargets"]
        except OSError:
            return {}
        return {t["labels"]["job"]: t["health"] for t in active}

    wait_for(
        lambda: targets() == {"oddity-detector": "up", "oddity-trainer": "up"},
        timeout=60,
        what="both targets scraped",
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
        groups = json.load(response)["data"]["groups"]
    assert groups, "no recording rules loaded"


def service_logs(up: UpProcess) -> dict[str, bytes]:
    """The services' log files (Prometheus appends to its own as it runs)."""
    return {path.name: path.read_bytes() for path in (up.folder / "logs").iterdir() if path.name != "prometheus.log"}


def test_a_second_up_on_the_folder_of_a_running_one_says_so_and_leaves_it_alone(running_stack):
    up = running_stack.up
    logs = service_logs(up)
    detector, trainer = up.serving("detector"), up.serving("trainer")

    # The same command again: the same folder, the ports the first one listens on.
    second = up_once(
        up.folder,
        "--no-embedder",
        *("--detector-port", str(detector["port"]), "--trainer-port", str(trainer["port"])),
        *("--detector-metrics-port", str(detector["metrics_port"])),
        *("--trainer-metrics-port", str(trainer["metrics_port"])),
    )

    assert second.returncode == IN_USE
    assert second.stderr == (
        f"error: {up.folder} is used by another `oddity up` (pid {up.proc.pid}): stop it with Ctrl-C, "
        "or pass another --data-volume\n"
    )
    assert second.stdout == ""
    assert service_logs(up) == logs
    with DetectorClient(up.target("detector")) as client:
        assert client.models() == []
    with TrainerClient(up.target("trainer")) as client:
        assert client.status() == []


def test_up_serves_a_dropped_dataset(running_stack, cli, tmp_path):
    up = running_stack.up
    stderr = up.stderr_text()
    assert f"{up.folder.resolve() / 'datasets'}/<name>/" in stderr
    services = sorted(name for name in up.children() if name.startswith("oddity."))
    assert services == ["oddity.detector.main", "oddity.trainer.main"]  # --no-embedder
    metrics_port = up.serving("detector")["metrics_port"]
    assert f"http://127.0.0.1:{metrics_port}/metrics" in stderr

    spec = {"sources": [{"path": "*.csv"}], "model": {"kind": "knn"}, "retrain": {"debounce_seconds": 0.2}}
    datasets.write_dataset(up.folder, "sensors", spec, {"readings.csv": datasets.sensor_frame(300, 4)})
    detector = up.target("detector")
    with DetectorClient(detector) as client:
        wait_for(
            lambda: any(m.name == "sensors" and m.serving_version == 1 for m in client.models()),
            timeout=180,
            what="sensors version 1 serving",
        )
        rows = pd.concat([datasets.sensor_frame(40, 4, seed=9), datasets.anomalies(datasets.sensor_frame(10, 4))])
        rows.insert(0, "id", [f"row-{i}" for i in range(len(rows))])
        source = tmp_path / "new.csv"
        rows.to_csv(source, index=False)
        result = invoke(cli, "score", source, "--model", "sensors", "--detector", detector, "--out", tmp_path / "o.csv")
        assert result.exit_code == 0, result.stderr
        scored = pd.read_csv(tmp_path / "o.csv")
        expected = client.detect("sensors", pd.read_csv(source), explain_top_k=3).to_frame()
    assert len(scored) == 50
    assert scored["id"].tolist() == rows["id"].tolist()
    for column in ("score", "normalized_score", "is_anomaly", "threshold", "group", "fallback", "top_features"):
        assert scored[column].tolist() == expected[column].tolist(), column
    assert int(scored["is_anomaly"].sum()) == int(expected["is_anomaly"].sum())


def test_sigterm_stops_every_service_and_prometheus(running_stack):
    up = running_stack.up
    children = up.children()  # with whatever was started while training
    assert sorted(children) == ["oddity.detector.main", "oddity.trainer.main", *(["prometheus"] if PROMETHEUS else [])]

    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=60) == 0
    assert [name for name, child in children.items() if child.is_running()] == []
    wait_for(lambda: up.stderr and up.stderr[-1] == "stopped", timeout=10, what="the last line")
    for service in ("detector", "trainer"):
        logged = [
            json.loads(line)["event"] for line in (up.folder / "logs" / f"{service}.log").read_text().splitlines()
        ]
        assert logged[0] == "serving"
        assert logged[-1] == "stopped"


def served_image_model(up: UpProcess) -> str:
    """The model id the stack's embedder serves as vit, once loaded (a first export takes a while)."""
    wait_for(lambda: up.serving("embedder"), timeout=120, what="the embedder serving")

    def loaded() -> str | None:
        try:
            with EmbedderClient(up.target("embedder")) as client:
                return client.models("vit")[0].model_id
        except Unavailable:  # still loading
            return None

    return wait_for(loaded, timeout=180, what="vit loaded")


def test_model_choices_are_kept_in_stack_json_and_served_again_without_model(tmp_path, shared_encoders):
    weights = small_vit(tmp_path / "weights" / "vit").resolve()
    folder = with_text_model_exported(tmp_path / "stack", shared_encoders)
    for args in (("--model", f"vit={weights}"), ()):  # the second start: no --model
        up = start_up(folder, "--embedder", *args)
        try:
            wait_for(lambda up=up: "Oddity is up" in up.stderr_text(), timeout=120, what="the welcome panel")
            assert served_image_model(up) == str(weights)
            origin = "--model" if args else "remembered from stack.json"
            panel = " ".join(up.stderr_text().replace("│", " ").split())
            assert f"embedder models: vit={weights} ({origin})" in panel
            assert json.loads((folder / "stack.json").read_text()) == {
                "models": [{"name": "vit", "model_id": str(weights), "modality": "image"}]
            }
            assert not (folder / "demo" / "small-vit").exists()  # vit is given: no small ViT made
            up.proc.send_signal(signal.SIGTERM)
            assert up.proc.wait(timeout=60) == 0
        finally:
            up.kill()
