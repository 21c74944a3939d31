"""TLS, client certificates and tokens from the command line (options and env vars) and the
SDK, against a detector that demands mutual TLS and bearer tokens: with every piece the calls
work; without a token, a certificate, or with a read token on an admin call, they fail with
the right code and one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trustme

from oddity.cli.main import app
from oddity.client import DetectorClient, FailedPrecondition
from tests.client.conftest import invoke, publish_models, stdout_of, table, usage_error
from tests.conftest import start_detector
from tests.support.certificates import identity


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-cli")
    ca = trustme.CA()
    server = identity(root / "detector", ca, "localhost", "127.0.0.1")
    client = identity(root / "client", ca, "cli.example")
    server_cert, server_key, ca_file = server.cert, server.key, server.ca
    client_cert, client_key = client.cert, client.key
    (root / "read-tokens").write_text("cli:r3ad-token\n")
    (root / "admin-tokens").write_text("ops:adm1n-token\n")
    (root / "token").write_text("cli:r3ad-token\n")
    repository = root / "models"
    repository.mkdir()
    publish_models(repository)
    detector = start_detector(
        repository,
        tls_cert_file=server_cert,
        tls_key_file=server_key,
        tls_ca_file=ca_file,
        tls_client_auth=True,
        read_tokens_file=root / "read-tokens",
        admin_tokens_file=root / "admin-tokens",
    )
    yield {
        "target": f"localhost:{detector.server.port}",
        "ca": ca_file,
        "cert": client_cert,
        "key": client_key,
        "token": root / "token",
        "root": root,
    }
    detector.close()


def options(s: dict, *, token: bool = True, certificate: bool = True) -> list[object]:
    args: list[object] = ["--detector", s["target"], "--tls-ca-file", s["ca"]]
    if certificate:
        args += ["--tls-cert-file", s["cert"], "--tls-key-file", s["key"]]
    if token:
        args += ["--token-file", s["token"]]
    return args


def test_options_give_tls_a_client_certificate_and_a_token(cli, secured):
    result = invoke(cli, "models", "--json", *options(secured))
    assert result.exit_code == 0, result.stderr
    assert [m["name"] for m in json.loads(result.stdout)] == ["routed", "sensors"]

    readings = secured["root"] / "readings.csv"
    table(12).to_csv(readings, index=False)
    scored = invoke(cli, "score", readings, "--model", "sensors", *options(secured))
    assert scored.exit_code == 0, scored.stderr
    assert len(scored.stdout.splitlines()) == 13


def test_env_vars_do_the_same(cli, secured):
    env = {
        "ODDITY_DETECTOR_TARGET": secured["target"],
        "ODDITY_TLS_CA_FILE": str(secured["ca"]),
        "ODDITY_TLS_CERT_FILE": str(secured["cert"]),
        "ODDITY_TLS_KEY_FILE": str(secured["key"]),
        "ODDITY_TOKEN_FILE": str(secured["token"]),
    }
    result = cli.invoke(app, ["models", "--json"], env=env)
    assert result.exit_code == 0, result.stderr
    assert [m["name"] for m in json.loads(result.stdout)] == ["routed", "sensors"]


@pytest.mark.slow
def test_each_missing_piece_fails_with_its_code_and_one_line(cli, secured):
    no_token = invoke(cli, "models", *options(secured, token=False))
    assert no_token.exit_code == 1
    assert no_token.stderr == (
        f"error: detector at {secured['target']}: UNAUTHENTICATED: a valid bearer token is required\n"
    )
    no_certificate = invoke(cli, "models", *options(secured, certificate=False), "--timeout", 2)
    assert no_certificate.exit_code == 3  # the handshake is refused until the deadline
    assert no_certificate.stderr.startswith(f"error: detector at {secured['target']}: ")
    plaintext = invoke(cli, "models", "--detector", secured["target"], "--token-file", secured["token"], "--timeout", 2)
    assert plaintext.exit_code == 3
    certificate_without_key = invoke(
        cli,
        "models",
        "--detector",
        secured["target"],
        "--tls-ca-file",
        secured["ca"],
        "--tls-cert-file",
        secured["cert"],
    )
    assert certificate_without_key.exit_code == 2
    assert "tls_cert_file and tls_key_file go together" in usage_error(certificate_without_key)


def test_the_sdk_speaks_tls_and_tokens(secured):
    tls = {"ca_file": secured["ca"], "cert_file": secured["cert"], "key_file": secured["key"]}
    with DetectorClient(secured["target"], token="r3ad-token", **tls) as reader:
        assert reader.detect("sensors", np.zeros((2, 4), np.float32)).version == 1
        with pytest.raises(FailedPrecondition) as refused:  # a read token on an admin call
            reader.load_model("sensors")
        assert str(refused.value) == (
            f"detector at {secured['target']}: PERMISSION_DENIED: LoadModel needs an admin token"
        )
    with DetectorClient(secured["target"], token="adm1n-token", request_id="cli-test-1", **tls) as admin:
        assert admin.load_model("sensors").serving_version == 1


def test_json_stays_clean_when_a_call_is_refused(cli, secured):
    refused = invoke(cli, "models", "--json", *options(secured, token=False))
    assert refused.exit_code == 1
    assert stdout_of(refused) == ""
