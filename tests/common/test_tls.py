"""TLS and mutual TLS on real servers: a client without the CA, with a client certificate of
another CA, or without a token is refused; with them it works; health answers without a token;
rotated certificates are picked up without a restart, by servers and by Oddity's clients (a
rotation that keeps sizes and mtimes too); a half-written pair is warned about once; the
trainer tells a mutual-TLS detector of a new version over TLS; an Oddity client whose
handshakes fail says it is TLS and why."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time

import grpc
import numpy as np
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oddity.common.clients import DetectorAdminClient
from oddity.common.errors import Unavailable
from oddity.common.tls import TlsFiles
from oddity.common.watched_files import CHECK_SECONDS
from oddity.v1 import detector_pb2, detector_pb2_grpc, embedder_pb2, embedder_pb2_grpc
from tests.conftest import start_detector, start_embedder, start_trainer
from tests.support import datasets, drawings, models
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


def served_certificate(port: int, client: trustme.LeafCert) -> bytes:
    """The DER certificate the server presents to a new connection (not verified: whichever it is)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client.configure_cert(context)
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.getpeercert(binary_form=True)


def mutual_tls_detector(repository, folder, ca: trustme.CA):
    """A detector serving a certificate of `ca` for localhost, requiring client certificates of `ca`."""
    server = identity(folder, ca, "localhost", "127.0.0.1")
    detector = start_detector(
        repository, tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=server.ca, tls_client_auth=True
    )
    return detector, server


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


@pytest.mark.slow
def test_a_rotated_server_certificate_and_ca_are_used_without_a_restart(published, tmp_path):
    old_ca, new_ca = trustme.CA(), trustme.CA()
    detector, server = mutual_tls_detector(published, tmp_path / "detector", old_ca)
    try:
        port = detector.server.port
        target = f"localhost:{port}"
        old_client, new_client = old_ca.issue_cert("client"), new_ca.issue_cert("client")
        assert detect(target, credentials(old_ca, old_client)) == 1
        assert refused(target, credentials(new_ca, new_client)) == grpc.StatusCode.UNAVAILABLE

        rotated = new_ca.issue_cert("localhost", "127.0.0.1")
        server.write(new_ca, rotated)

        new = ssl.PEM_cert_to_DER_cert(rotated.cert_chain_pems[0].bytes().decode())
        # Files are looked at again within a second.
        wait_for(lambda: served_certificate(port, new_client) == new, timeout=10, what="the new certificate served")
        assert detect(target, credentials(new_ca, new_client)) == 1
        assert refused(target, credentials(old_ca, old_client)) == grpc.StatusCode.UNAVAILABLE
    finally:
        detector.close()


def warnings_logged(capfd, event: str) -> int:
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    return sum(1 for line in lines if line.get("event") == event)


@pytest.mark.slow
def test_a_half_written_pair_keeps_the_previous_certificate_and_is_warned_about_once(published, tmp_path, capfd):
    ca = trustme.CA()
    server = identity(tmp_path / "detector", ca, "localhost", "127.0.0.1")
    detector = start_detector(published, tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=server.ca)
    try:
        target = f"localhost:{detector.server.port}"
        capfd.readouterr()
        server.cert.write_bytes(ca.issue_cert("localhost").cert_chain_pems[0].bytes())  # its key not written yet
        for _ in range(2):  # new connections for longer than the files are looked at again
            for _ in range(10):
                assert detect(target, credentials(ca)) == 1
            time.sleep(CHECK_SECONDS)
        assert warnings_logged(capfd, "new certificate files not usable yet; serving the previous ones") == 1
    finally:
        detector.close()


def same_sized_pair(ca: trustme.CA, like: trustme.LeafCert) -> trustme.LeafCert:
    """Another certificate and key with the sizes of `like`'s (signatures vary by a byte or two)."""
    sizes = [len(like.cert_chain_pems[0].bytes()), len(like.private_key_pem.bytes())]
    for _ in range(100):
        other = ca.issue_cert("localhost", "127.0.0.1")
        if [len(other.cert_chain_pems[0].bytes()), len(other.private_key_pem.bytes())] == sizes:
            return other
    raise AssertionError("no certificate of the same size in 100 tries")


@pytest.mark.slow
def test_a_rotation_that_keeps_sizes_and_mtimes_is_picked_up(published, tmp_path):
    """`cp -p` or `rsync -a` of a same-sized pair: the files are rewritten in place and keep
    their mtimes; new connections get the new certificate."""
    ca = trustme.CA()
    first = ca.issue_cert("localhost", "127.0.0.1")
    server = identity(tmp_path / "detector", ca, "localhost", "127.0.0.1").write(ca, first)
    detector = start_detector(published, tls_cert_file=server.cert, tls_key_file=server.key, tls_ca_file=server.ca)
    try:
        port = detector.server.port
        client = ca.issue_cert("client")
        assert served_certificate(port, client) == ssl.PEM_cert_to_DER_cert(first.cert_chain_pems[0].bytes().decode())

        second = same_sized_pair(ca, first)
        for path, pem in ((server.cert, second.cert_chain_pems[0]), (server.key, second.private_key_pem)):
            before = os.stat(path)
            path.write_bytes(pem.bytes())
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (before.st_size, before.st_mtime_ns)

        new = ssl.PEM_cert_to_DER_cert(second.cert_chain_pems[0].bytes().decode())
        wait_for(lambda: served_certificate(port, client) == new, timeout=10, what="the new certificate served")
    finally:
        detector.close()


def test_a_client_that_fails_the_handshake_says_it_is_tls_and_why(published, tmp_path):
    ca, foreign = trustme.CA(), trustme.CA()
    detector, _ = mutual_tls_detector(published, tmp_path / "detector", ca)
    stranger = identity(tmp_path / "trainer", foreign, "trainer")  # trusts another CA, and is signed by it

    async def load() -> str:
        client = DetectorAdminClient(f"localhost:{detector.server.port}", tls=stranger.files(), timeout=0.5)
        try:
            with pytest.raises(Unavailable) as error:
                await client.load_model("m")
            return error.value.message
        finally:
            await client.close()

    try:
        message = asyncio.run(load())
    finally:
        detector.close()
    assert "TLS handshake failure: the server's certificate is not trusted by the CA file" in message
    assert str(stranger.ca) in message


@pytest.mark.slow
def test_a_client_whose_certificate_the_server_refuses_is_told_so(published, tmp_path):
    ca, foreign = trustme.CA(), trustme.CA()
    detector, server = mutual_tls_detector(published, tmp_path / "detector", ca)
    stranger = identity(tmp_path / "trainer", foreign, "trainer")
    stranger.ca.write_bytes(ca.cert_pem.bytes())  # trusts the detector; its own certificate is foreign
    port = detector.server.port

    async def messages() -> list[str]:
        found = []
        for files in (stranger.files(), TlsFiles(ca_file=server.ca)):  # a foreign certificate, then none
            client = DetectorAdminClient(f"localhost:{port}", tls=files, timeout=0.5)
            try:
                with pytest.raises(Unavailable) as error:
                    await client.load_model("m")
                found.append(error.value.message.partition("TLS handshake failure: ")[2])
            finally:
                await client.close()
        return found

    try:
        foreign_certificate, no_certificate = asyncio.run(messages())
    finally:
        detector.close()
    assert foreign_certificate.startswith(
        f"the server ended the handshake after this service's certificate {stranger.cert}"
    )
    assert no_certificate == "the server ended the handshake: it requires a client certificate, and none is configured"


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


def test_the_detector_calls_a_mutual_tls_embedder_over_tls(repository, tmp_path, shared_encoders):
    ca = trustme.CA()
    embedder_files = identity(tmp_path / "embedder", ca, "localhost", "127.0.0.1")
    detector_files = identity(tmp_path / "detector", ca, "localhost", "127.0.0.1")
    embedder = start_embedder(
        shared_encoders.cache_dir,
        shared_encoders.only("vit"),
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
                lambda: (
                    health_pb2_grpc.HealthStub(ch)
                    .Check(health_pb2.HealthCheckRequest(service="oddity.v1.Embedder"), timeout=10)
                    .status
                    == health_pb2.HealthCheckResponse.SERVING
                ),
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
