"""TLS and mutual TLS on real servers: a client without the CA, with a client certificate of
another CA, or without a token is refused; with them it works; health answers without a token;
rotated certificates are picked up without a restart, by servers and by Oddity's clients; the
trainer tells a mutual-TLS detector of a new version over TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl

import grpc
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oddity.common.clients import DetectorAdminClient
from oddity.embedder.models import ModelSource
from oddity.v1 import detector_pb2, detector_pb2_grpc, embedder_pb2, embedder_pb2_grpc
from tests.conftest import start_detector, start_embedder, start_trainer
from tests.support import datasets, drawings, encoders, models
from tests.support.certificates import identity
from tests.support.client import detect_request
from tests.support.waiting import wait_for

D = 4


def credentials(ca: trustme.CA | None, client: trustme.LeafCert | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem.bytes() if ca else None,
        private_key=client.private_key_pem.bytes() if client else None,
        certificate_chain=b"".join(p.bytes() for p in client.cert_chain_pems) if client else None,
    )


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def detect(target: str, creds: grpc.ChannelCredentials, metadata=None) -> int:
    """One Detect on a fresh channel; returns the served version."""
    with grpc.secure_channel(target, creds) as ch:
        stub = detector_pb2_grpc.DetectorStub(ch)
        return stub.Detect(detect_request("m", models.normal_rows(2, D)), timeout=10, metadata=metadata).model_version


def refused(target: str, creds: grpc.ChannelCredentials, metadata=None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        detect(target, creds, metadata)
    return error.value.code()


def served_certificate(port: int, ca: trustme.CA, client: trustme.LeafCert) -> bytes:
    """The DER certificate the server presents to a new connection."""
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    client.configure_cert(context)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.getpeercert(binary_form=True)


@pytest.fixture
def published(repository):
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    return repository


def test_mutual_tls_and_tokens_refuse_every_missing_piece(published, tmp_path):
    ca, other_ca = trustme.CA(), trustme.CA()
    server = identity(tmp_path / "detector", ca, "localhost", "127.0.0.1")
    (tmp_path / "read-tokens").write_text("dashboard:r3ad-token\n")
    detector = start_detector(
        published,
        tls_cert_file=server.cert,
        tls_key_file=server.key,
        tls_ca_file=server.ca,
        tls_client_auth=True,
        read_tokens_file=tmp_path / "read-tokens",
    )
    try:
        target = f"localhost:{detector.server.port}"
        client = ca.issue_cert("dashboard.example")
        stranger = other_ca.issue_cert("dashboard.example")
        token = bearer("r3ad-token")

        assert refused(target, credentials(None, client), token) == grpc.StatusCode.UNAVAILABLE  # no CA
        assert refused(target, credentials(ca), token) == grpc.StatusCode.UNAVAILABLE  # no client certificate
        assert refused(target, credentials(ca, stranger), token) == grpc.StatusCode.UNAVAILABLE  # wrong CA
        assert refused(target, credentials(ca, client)) == grpc.StatusCode.UNAUTHENTICATED  # no token
        assert refused(target, credentials(ca, client), bearer("guess")) == grpc.StatusCode.UNAUTHENTICATED
        assert detect(target, credentials(ca, client), token) == 1

        with grpc.secure_channel(target, credentials(ca, client)) as ch:  # a probe: certificate, no token
            check = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        detector.close()


def test_a_rotated_server_certificate_and_ca_are_used_without_a_restart(published, tmp_path):
    old_ca, new_ca = trustme.CA(), trustme.CA()
    server = identity(tmp_path / "detector", old_ca, "localhost", "127.0.0.1")
    detector = start_detector(
        published, tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=server.ca, tls_client_auth=True
    )
    try:
        port = detector.server.port
        target = f"localhost:{port}"
        old_client, new_client = old_ca.issue_cert("client"), new_ca.issue_cert("client")
        assert detect(target, credentials(old_ca, old_client)) == 1
        assert refused(target, credentials(new_ca, new_client)) == grpc.StatusCode.UNAVAILABLE

        rotated = new_ca.issue_cert("localhost", "127.0.0.1")
        server.write(new_ca, rotated)

        pem = rotated.cert_chain_pems[0].bytes().decode()
        assert served_certificate(port, new_ca, new_client) == ssl.PEM_cert_to_DER_cert(pem)
        assert detect(target, credentials(new_ca, new_client)) == 1
        assert refused(target, credentials(old_ca, old_client)) == grpc.StatusCode.UNAVAILABLE
    finally:
        detector.close()


def test_a_half_written_pair_keeps_the_previous_certificate(published, tmp_path):
    ca = trustme.CA()
    server = identity(tmp_path / "detector", ca, "localhost", "127.0.0.1")
    detector = start_detector(published, tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=server.ca)
    try:
        target = f"localhost:{detector.server.port}"
        server.cert.write_bytes(ca.issue_cert("localhost").cert_chain_pems[0].bytes())  # its key not written yet
        assert detect(target, credentials(ca)) == 1
    finally:
        detector.close()


@pytest.mark.slow
def test_oddity_clients_pick_up_rotated_files(published, tmp_path):
    """The client's files rotate to a new CA while the detector restarts with the new CA: the
    client's next call (after it looks at its files again) goes through on a new channel."""
    old_ca, new_ca = trustme.CA(), trustme.CA()
    server = identity(tmp_path / "detector", old_ca, "localhost", "127.0.0.1")
    client_files = identity(tmp_path / "trainer", old_ca, "trainer")
    detector = start_detector(
        published, tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=server.ca, tls_client_auth=True
    )
    port = detector.server.port

    async def scenario() -> tuple[int, int]:
        nonlocal detector
        client = DetectorAdminClient(f"localhost:{port}", tls=client_files.files(), timeout=10)
        try:
            before = await client.load_model("m")
            detector.close()
            server.write(new_ca, new_ca.issue_cert("localhost", "127.0.0.1"))
            client_files.write(new_ca, new_ca.issue_cert("trainer"))
            detector = start_detector(
                published,
                port=port,
                tls_cert_file=server.cert,
                tls_key_file=server.key,
                tls_ca_file=server.ca,
                tls_client_auth=True,
            )
            await asyncio.sleep(1.1)  # the client looks at its files at most once a second
            return before, await client.load_model("m")
        finally:
            await client.close()

    try:
        assert asyncio.run(scenario()) == (1, 1)
    finally:
        detector.close()


@pytest.mark.slow
def test_the_trainer_tells_a_mutual_tls_detector_over_tls(data_volume, repository, tmp_path):
    ca = trustme.CA()
    detector_files = identity(tmp_path / "detector", ca, "localhost", "127.0.0.1")
    trainer_files = identity(tmp_path / "trainer", ca, "trainer")
    # The detector polls rarely: the version arrives through the trainer's LoadModel.
    detector = start_detector(
        repository,
        poll_interval_seconds=3600,
        tls_cert_file=detector_files.cert,
        tls_key_file=detector_files.key,
        tls_ca_file=detector_files.ca,
        tls_client_auth=True,
    )
    trainer = start_trainer(
        data_volume,
        repository,
        detectors=[f"localhost:{detector.server.port}"],
        tls_cert_file=trainer_files.cert,
        tls_key_file=trainer_files.key,
        tls_ca_file=trainer_files.ca,
        tls_client_auth=True,
    )
    try:
        datasets.write_dataset(
            data_volume, "sensors", datasets.autoencoder_spec(), {"rows.csv": datasets.sensor_frame(300)}
        )
        client = ca.issue_cert("client")
        with grpc.secure_channel(f"localhost:{detector.server.port}", credentials(ca, client)) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            wait_for(
                lambda: stub.ListModels(detector_pb2.ListModelsRequest(), timeout=5).models,
                timeout=120,
                what="the detector told over TLS to load the trained version",
            )
    finally:
        trainer.close()
        detector.close()


def test_the_detector_calls_a_mutual_tls_embedder_over_tls(repository, tmp_path):
    ca = trustme.CA()
    embedder_files = identity(tmp_path / "embedder", ca, "localhost", "127.0.0.1")
    detector_files = identity(tmp_path / "detector", ca, "localhost", "127.0.0.1")
    vit = {"vit": ModelSource(model_id=str(encoders.tiny_vit(tmp_path / "vit")), modality="image")}
    embedder = start_embedder(
        tmp_path / "cache",
        vit,
        tls_cert_file=embedder_files.cert,
        tls_key_file=embedder_files.key,
        tls_ca_file=embedder_files.ca,
        tls_client_auth=True,
    )
    detector = None
    try:
        client = ca.issue_cert("client")
        with grpc.secure_channel(f"localhost:{embedder.server.port}", credentials(ca, client)) as ch:
            wait_for(
                lambda: health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="oddity.v1.Embedder"), timeout=10
                ).status == health_pb2.HealthCheckResponse.SERVING,
                timeout=120,
                what="the embedder ready",
            )
            info = embedder_pb2_grpc.EmbedderStub(ch).GetInfo(embedder_pb2.GetInfoRequest(model="vit"), timeout=10)
        models.publish_image_model(repository, info.models[0])
        detector = start_detector(
            repository,
            embedder=f"localhost:{embedder.server.port}",
            tls_cert_file=detector_files.cert,
            tls_key_file=detector_files.key,
            tls_ca_file=detector_files.ca,
            tls_client_auth=True,
        )
        rng = np.random.default_rng(0)
        request = detector_pb2.DetectImagesRequest(
            model="pictures", images=[drawings.drawing(5.0, rng), drawings.drawing(8.0, rng)], routing_values=[5, 8]
        )
        with grpc.secure_channel(f"localhost:{detector.server.port}", credentials(ca, client)) as ch:
            response = detector_pb2_grpc.DetectorStub(ch).DetectImages(request, timeout=60)
        assert len(response.result.scores) == 2
    finally:
        if detector is not None:
            detector.close()
        embedder.close()
