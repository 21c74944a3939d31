"""The console scripts the images use besides the services: the exec-probe health check
(against a real detector over mutual TLS, configured through env vars as in a pod) and the
embedder exporter."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trustme

from oddity.embedder.models import META_FILE, ModelSource
from tests.conftest import start_detector
from tests.support import models
from tests.support.certificates import identity
from tests.support.waiting import wait_for

DETECTOR = "oddity.v1.Detector"


@pytest.fixture
def health_check() -> ModuleType:
    return importlib.import_module("oddity.common.health_check")


@pytest.fixture
def pod_env(monkeypatch):
    """A clean ODDITY_DETECTOR_* environment, set like a pod's."""
    for name in list(os.environ):
        if name.startswith("ODDITY_"):
            monkeypatch.delenv(name)

    def set_env(**values: object) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"ODDITY_DETECTOR_{name}", str(value))

    return set_env


def test_health_check_over_mutual_tls_follows_readiness(health_check, pod_env, repository, tmp_path):
    ca = trustme.CA()
    tls = identity(tmp_path / "tls", ca, "oddity-detector", "oddity-detector.oddity.svc")
    (tmp_path / "read-tokens").write_text("client:r3ad\n")
    detector = start_detector(
        repository,
        tls_cert_file=tls.cert,
        tls_key_file=tls.key,
        tls_ca_file=tls.ca,
        tls_client_auth=True,
        read_tokens_file=tmp_path / "read-tokens",
    )
    try:
        pod_env(
            PORT=detector.server.port,
            TLS_CERT_FILE=tls.cert,
            TLS_KEY_FILE=tls.key,
            TLS_CA_FILE=tls.ca,
            TLS_CLIENT_AUTH="true",
            READ_TOKENS_FILE=tmp_path / "read-tokens",
        )
        probe = {"prefix": "ODDITY_DETECTOR", "server_name": "oddity-detector"}
        assert health_check.check(**probe) == (True, "SERVING")  # live, with the pod's own certificate
        # An empty repository: not ready until a model can serve.
        assert health_check.check(**probe, service=DETECTOR) == (False, "NOT_SERVING")
        fitted = models.fit_pca_group(models.normal_rows(200, 4), components=2)
        models.publish_simple(repository, "m", fitted, dimension=4)
        wait_for(lambda: health_check.check(**probe, service=DETECTOR)[0], what="readiness after a publish")

        # The certificate is checked against the Service name it carries.
        serving, seen = health_check.check(prefix="ODDITY_DETECTOR", server_name="oddity-trainer")
        assert not serving and seen.startswith("UNAVAILABLE")
        # A probe speaking plaintext to the TLS port fails.
        pod_env(TLS_CERT_FILE="", TLS_KEY_FILE="")
        assert not health_check.check(**probe)[0]
    finally:
        detector.close()


def test_health_check_sends_a_token_when_health_is_closed(health_check, pod_env, repository, tmp_path):
    (tmp_path / "read-tokens").write_text("# probes\nclient:r3ad\n")
    detector = start_detector(repository, read_tokens_file=tmp_path / "read-tokens", auth_open_health=False)
    try:
        pod_env(PORT=detector.server.port, READ_TOKENS_FILE=tmp_path / "read-tokens", AUTH_OPEN_HEALTH="false")
        assert health_check.check(prefix="ODDITY_DETECTOR") == (True, "SERVING")
        pod_env(AUTH_OPEN_HEALTH="true")  # the probe believes health is open: no token sent
        serving, seen = health_check.check(prefix="ODDITY_DETECTOR")
        assert not serving and seen.startswith("UNAUTHENTICATED")
    finally:
        detector.close()


def test_health_check_runs_as_a_command_in_plaintext(pod_env, repository):
    detector = start_detector(repository)
    try:
        pod_env(PORT=detector.server.port)
        command = [str(Path(sys.executable).parent / "oddity-health-check"), "--prefix", "ODDITY_DETECTOR"]
        live = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        assert live.returncode == 0, live.stderr
        ready = subprocess.run([*command, "--service", DETECTOR], capture_output=True, text=True, timeout=30)
        assert ready.returncode == 1 and "NOT_SERVING" in ready.stderr
        nothing = subprocess.run([*command, "--port", "1"], capture_output=True, text=True, timeout=30)
        assert nothing.returncode == 1 and "UNAVAILABLE" in nothing.stderr
    finally:
        detector.close()


@pytest.fixture
def exporter(monkeypatch, tmp_path) -> ModuleType:
    module = importlib.import_module("oddity.embedder.export_job")
    monkeypatch.setattr(module, "configure_logging", lambda **_: None)  # keep the suite's logging
    for name in list(os.environ):
        if name.startswith("ODDITY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ODDITY_EMBEDDER_MODELS", '{"text": {"model_id": "org/encoder", "modality": "text"}}')
    monkeypatch.setenv("ODDITY_EMBEDDER_DEFAULT_MODEL", "text")
    monkeypatch.setenv("ODDITY_EMBEDDER_CACHE_DIR", str(tmp_path / "cache"))
    return module


def test_exporter_leaves_a_cached_model_alone(exporter, tmp_path):
    folder = tmp_path / "cache" / ModelSource(model_id="org/encoder", modality="text").cache_key()
    folder.mkdir(parents=True)
    (folder / META_FILE).write_text("{}")
    assert exporter.main([]) == 0


def test_exporter_fails_when_a_model_cannot_be_exported(exporter, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # org/encoder is in no cache and no hub answers
    assert exporter.main([]) == 1


def test_the_console_scripts_are_installed():
    bin_folder = Path(sys.executable).parent
    for script in ("oddity-health-check", "oddity-embedder-export"):
        assert os.access(bin_folder / script, os.X_OK), f"{script} is not installed"
