"""The endpoints table is the one place the command line's default ports live: it agrees with
each service's own settings, the commands take their defaults from it, and no other module
of the client writes a port."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import typer

from oddity.cli.endpoints import ENDPOINTS, METRICS_PORT_BASE
from oddity.cli.main import app
from oddity.cli.stack import Ports, service_env
from oddity.detector.settings import DetectorSettings
from oddity.embedder.settings import EmbedderSettings
from oddity.trainer.settings import TrainerSettings

CLIENT = Path(__file__).resolve().parents[2] / "services" / "client" / "oddity"
SETTINGS = {"embedder": EmbedderSettings, "detector": DetectorSettings, "trainer": TrainerSettings}
DEFAULT_PORTS = {p for e in ENDPOINTS.values() for p in (e.port, e.metrics_port)} | {METRICS_PORT_BASE}


@pytest.mark.parametrize("service", list(ENDPOINTS))
def test_the_table_agrees_with_the_service_s_own_settings(service):
    endpoint = ENDPOINTS[service]
    settings = SETTINGS[service]
    assert settings.model_fields["port"].default == endpoint.port
    assert settings.model_fields["metrics_port"].default == endpoint.metrics_port
    assert settings.model_config["env_prefix"] == endpoint.settings_env_prefix
    assert importlib.util.find_spec(endpoint.module) is not None
    assert service_env(service)[f"{endpoint.settings_env_prefix}LOG_JSON"] == "true"


def _options(command: str) -> dict[str, Any]:
    """The command's parameters, as typer gives them to click."""
    return {p.name: p for p in typer.main.get_group(app).commands[command].params}


def test_oddity_up_listens_where_the_commands_look_by_default():
    options = _options("up")
    for service, endpoint in ENDPOINTS.items():
        assert options[f"{service}_port"].default == endpoint.port
        assert options["metrics_port_base"].default + endpoint.metrics_offset == endpoint.metrics_port
    assert Ports().grpc == {s: e.port for s, e in ENDPOINTS.items()}
    assert Ports().metrics == {s: e.metrics_port for s, e in ENDPOINTS.items()}


@pytest.mark.parametrize(("command", "services"), [("demo", list(ENDPOINTS)), ("models", ["detector"])])
def test_connection_options_default_to_the_table(command, services):
    options = _options(command)
    for service in services:
        target = options[f"{service}_target"]
        assert (target.default, target.envvar) == (ENDPOINTS[service].default_target, ENDPOINTS[service].target_env)
    assert [options[name].envvar for name in ("tls_ca_file", "tls_cert_file", "tls_key_file", "token_file")] == [
        "ODDITY_TLS_CA_FILE",
        "ODDITY_TLS_CERT_FILE",
        "ODDITY_TLS_KEY_FILE",
        "ODDITY_TOKEN_FILE",
    ]


def _port_literals(path: Path) -> list[str]:
    """Default ports written as code (docstrings and comments may name them)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or id(node) in docstrings:
            continue
        if node.value in DEFAULT_PORTS or (
            isinstance(node.value, str) and any(f":{port}" in node.value for port in DEFAULT_PORTS)
        ):
            found.append(f"{path.relative_to(CLIENT)}:{node.lineno}: {node.value!r}")
    return found


def test_no_module_but_the_table_writes_a_default_port():
    modules = sorted(p for p in CLIENT.rglob("*.py") if p.name != "endpoints.py")
    assert len(modules) > 30
    assert [hit for path in modules for hit in _port_literals(path)] == []
