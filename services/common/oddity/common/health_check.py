"""grpc.health.v1 check of the service in this container, for Kubernetes exec probes.

kubelet's own gRPC probe speaks plaintext only; a service serving TLS (or mutual TLS) is
probed with this instead. It reads the service's own settings from the environment, so the
probe follows the ConfigMap: the gRPC port (`<prefix>_PORT`) and, when the service serves TLS
(`<prefix>_TLS_CERT_FILE`), the CA that verifies it (`<prefix>_TLS_CA_FILE`) and the
service's own certificate and key, presented as the client certificate mutual TLS asks for.
When health checks need a token (`<prefix>_AUTH_OPEN_HEALTH=false`), the first read token
of the service's own tokens file is sent.

    oddity-health-check --prefix ODDITY_DETECTOR                       # liveness ("")
    oddity-health-check --prefix ODDITY_DETECTOR --service oddity.v1.Detector --server-name oddity-detector

Exit status 0 when the service answers SERVING, 1 otherwise (the reason on stderr).

Reason to change: how a probe inside the pod checks its service.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oddity.common.auth import AUTHORIZATION_KEY
from oddity.common.tls import TlsFiles, channel_credentials
from oddity.common.token_files import read_token

FALSE = {"0", "false", "no", "off"}


def check(
    *, prefix: str, service: str = "", port: int | None = None, server_name: str | None = None, timeout: float = 3.0
) -> tuple[bool, str]:
    """(serving, what was seen) for the service whose settings use this env prefix."""

    def env(name: str) -> str | None:
        return os.environ.get(f"{prefix}_{name}") or None

    port = port or int(env("PORT") or 0)
    if not port:
        return False, f"no port: pass --port or set {prefix}_PORT"
    target = f"127.0.0.1:{port}"
    cert_file, key_file, ca_file = env("TLS_CERT_FILE"), env("TLS_KEY_FILE"), env("TLS_CA_FILE")
    if cert_file and key_file:
        files = TlsFiles(Path(cert_file), Path(key_file), Path(ca_file) if ca_file else None)
        # The certificate names the Service, not 127.0.0.1: verify it against that name.
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(target, channel_credentials(files), options)
    else:
        channel = grpc.insecure_channel(target)
    metadata = []
    if (env("AUTH_OPEN_HEALTH") or "true").lower() in FALSE:
        tokens_file = env("READ_TOKENS_FILE") or env("ADMIN_TOKENS_FILE")
        if tokens_file:
            metadata.append((AUTHORIZATION_KEY, f"Bearer {read_token(Path(tokens_file))}"))
    with channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=metadata
            )
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}" if exc.details() else exc.code().name
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oddity-health-check", description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True, help="the service's env prefix, e.g. ODDITY_DETECTOR")
    parser.add_argument("--service", default="", help='grpc.health.v1 service name ("": the process is up)')
    parser.add_argument("--port", type=int, help="gRPC port (default: $<prefix>_PORT)")
    parser.add_argument("--server-name", help="a DNS name in the service's certificate (TLS only)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds")
    args = parser.parse_args(argv)
    try:
        serving, seen = check(
            prefix=args.prefix.rstrip("_"),
            service=args.service,
            port=args.port,
            server_name=args.server_name,
            timeout=args.timeout,
        )
    except (OSError, ValueError) as exc:
        serving, seen = False, str(exc)
    print(f"{args.service or '(liveness)'}: {seen}", file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
