"""Bearer tokens and roles on real servers: no or a wrong token is UNAUTHENTICATED, a read
token cannot call admin RPCs, an admin token can, every admin call leaves one audit line,
health stays open for probes, tokens rotate without a restart, and the trainer's own call to
the detector carries its admin token."""

import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oddity.common.auth import Tokens
from oddity.common.token_files import CHECK_SECONDS
from oddity.v1 import detector_pb2, detector_pb2_grpc, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets, models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel
from tests.support.waiting import wait_for

D = 4


@pytest.fixture
def token_files(tmp_path):
    read, admin = tmp_path / "read-tokens", tmp_path / "admin-tokens"
    read.write_text("# data and status callers\ndashboard:r3ad-token\n")
    admin.write_text("trainer:adm1n-token\n")
    return read, admin


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def test_tokens_are_compared_and_rotated(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("ops:first\nplain-token\n")
    tokens = Tokens(admin_files=[path])
    assert tokens.principal(b"first").name == "ops"
    assert tokens.principal(b"plain-token").name.startswith("token-")
    assert tokens.principal(b"nope") is None
    path.write_text("ops:second\n")
    time.sleep(CHECK_SECONDS)  # files are looked at again at most once a second
    assert tokens.principal(b"first") is None and tokens.principal(b"second").admin


def test_a_rotation_that_keeps_size_and_mtime_is_seen(tmp_path):
    """`cp -p` and `rsync -a` keep the mtime: a same-length token must still replace the old."""
    path = tmp_path / "tokens"
    path.write_text("ops:aaaa\n")
    tokens = Tokens(read_files=[path])
    assert tokens.principal(b"aaaa").name == "ops"
    before = path.stat()
    path.write_text("ops:bbbb\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    time.sleep(CHECK_SECONDS)
    assert (tokens.principal(b"aaaa"), tokens.principal(b"bbbb").name) == (None, "ops")


def test_a_tokens_file_that_is_not_text_keeps_the_last_good_tokens(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("ops:good\n")
    tokens = Tokens(read_files=[path])
    assert tokens.principal(b"good").name == "ops"
    path.write_bytes(b"ops:\xff\xfe broken\n")
    time.sleep(CHECK_SECONDS)
    assert tokens.principal(b"good").name == "ops"


def test_roles_on_the_detector(repository, token_files):
    read, admin = token_files
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    detector = start_detector(repository, read_tokens_file=read, admin_tokens_file=admin)
    try:
        rows = models.normal_rows(2, D)
        health = health_pb2_grpc.HealthStub(detector.channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING

        for metadata in (None, bearer("wrong"), (("authorization", "r3ad-token"),)):
            with pytest.raises(grpc.RpcError) as refused:
                detector.stub.Detect(detect_request("m", rows), metadata=metadata)
            assert (refused.value.code(), refused.value.details()) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid bearer token is required",
            )
        assert len(detector.stub.Detect(detect_request("m", rows), metadata=bearer("r3ad-token")).scores) == 2
        with pytest.raises(grpc.RpcError) as denied:
            detector.stub.UnloadModel(detector_pb2.UnloadModelRequest(model="m"), metadata=bearer("r3ad-token"))
        assert (denied.value.code(), denied.value.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "UnloadModel needs an admin token",
        )
        assert detector.stub.Detect(detect_request("m", rows), metadata=bearer("adm1n-token")).model_version == 1
        loaded = detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"), metadata=bearer("adm1n-token"))
        assert loaded.status.serving_version == 1
    finally:
        detector.close()


def test_every_admin_call_leaves_one_audit_line(repository, token_files):
    read, admin = token_files
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, "m", fit, dimension=D)
    detector = ServiceProcess(
        "oddity.detector.main",
        ["--model-repository", str(repository), "--read-tokens-file", str(read), "--admin-tokens-file", str(admin)],
    ).start()
    try:
        detector.wait_ready("oddity.v1.Detector")
        with channel(detector.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            stub.LoadModel(detector_pb2.LoadModelRequest(model="m"), metadata=bearer("adm1n-token"))
            with pytest.raises(grpc.RpcError):
                stub.UnloadModel(detector_pb2.UnloadModelRequest(model="m"), metadata=bearer("r3ad-token"))
            with pytest.raises(grpc.RpcError):
                stub.UnloadModel(detector_pb2.UnloadModelRequest(model="m"))
            stub.Detect(detect_request("m", models.normal_rows(1, D)), metadata=bearer("r3ad-token"))
        assert detector.terminate() == 0
    finally:
        detector.kill()
    audits = [(a["principal"], a["rpc"], a["code"]) for a in detector.events("audit")]
    assert audits == [
        ("trainer", "LoadModel", "OK"),
        ("dashboard", "UnloadModel", "PERMISSION_DENIED"),
        ("anonymous", "UnloadModel", "UNAUTHENTICATED"),
    ]


def test_the_trainer_tells_a_guarded_detector_with_its_admin_token(data_volume, repository, token_files):
    read, admin = token_files
    detector = start_detector(repository, read_tokens_file=read, admin_tokens_file=admin, poll_interval_seconds=60)
    trainer = start_trainer(
        data_volume, repository, detectors=[detector.server.target], detector_token_file=admin,
        read_tokens_file=read, admin_tokens_file=admin,
    )
    try:
        spec = {"sources": [{"path": "*.csv"}], "retrain": {"policy": "manual"}}
        datasets.write_dataset(data_volume, "guarded", spec, {"rows.csv": datasets.sensor_frame(300)})
        with pytest.raises(grpc.RpcError) as denied:
            trainer.stub.Train(trainer_pb2.TrainRequest(dataset="guarded"), metadata=bearer("r3ad-token"))
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        trainer.stub.Train(trainer_pb2.TrainRequest(dataset="guarded"), metadata=bearer("adm1n-token"))
        # The detector polls once a minute here: serving at once means the LoadModel got through.
        wait_for(
            lambda: detector.stub.ListModels(detector_pb2.ListModelsRequest(), metadata=bearer("r3ad-token")).models,
            timeout=60,
            what="the detector told to load the new version",
        )
    finally:
        trainer.close()
        detector.close()
