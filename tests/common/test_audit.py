"""Audit lines say what an admin call changed: the detector's LoadModel and UnloadModel name
the model and the version loaded or unloaded, the trainer's Train, Rollback and SetThreshold
the dataset and the version published (with the job, the version restored, the percentile).
Bytes that do not parse are judged by their token first: no token is UNAUTHENTICATED, a read
token on an admin RPC PERMISSION_DENIED, an admin token INVALID_ARGUMENT, each audited; they
count against the rate limit like any call."""

import grpc
import pytest

from oddity.common.errors import shown
from oddity.v1 import detector_pb2, detector_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.common.test_auth import bearer
from tests.conftest import start_detector
from tests.support import datasets, models
from tests.support.servers import ServiceProcess, channel

D = 4
# Field 1 says 255 bytes follow, and none do: no message parses from this.
GARBAGE = b"\x0a\xff\x01"
# What every log line of a call carries whatever it did: left out to compare the rest exactly.
PER_LINE = {"event", "level", "timestamp", "logger", "request_id"}


@pytest.fixture
def token_files(tmp_path):
    read, admin = tmp_path / "read-tokens", tmp_path / "admin-tokens"
    read.write_text("dashboard:r3ad-token\n")
    admin.write_text("ops:adm1n-token\n")
    return read, admin


ADMIN, READ = bearer("adm1n-token"), bearer("r3ad-token")


def audits(process: ServiceProcess) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in PER_LINE} for line in process.events("audit")]


def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def guarded(module: str, token_files, *args: str) -> ServiceProcess:
    read, admin = token_files
    return ServiceProcess(module, [*args, "--read-tokens-file", str(read), "--admin-tokens-file", str(admin)]).start()


@pytest.mark.slow
def test_detector_audit_lines_name_the_model_and_the_version(repository, token_files):
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    assert [models.publish_simple(repository, "m", fit, dimension=D) for _ in range(2)] == [1, 2]
    detector = guarded("oddity.detector.main", token_files, "--model-repository", str(repository))
    try:
        detector.wait_ready("oddity.v1.Detector")
        with channel(detector.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            stub.LoadModel(detector_pb2.LoadModelRequest(model="m", version=1), metadata=ADMIN)
            stub.LoadModel(detector_pb2.LoadModelRequest(model="m"), metadata=ADMIN)  # the newest: 2
            stub.UnloadModel(detector_pb2.UnloadModelRequest(model="m"), metadata=ADMIN)
            long_name = detector_pb2.LoadModelRequest(model="x" * 1000, version=3)
            assert refused(lambda: stub.LoadModel(long_name, metadata=ADMIN))[0] == grpc.StatusCode.NOT_FOUND

            raw = ch.unary_unary("/oddity.v1.Detector/UnloadModel", request_serializer=None, response_deserializer=None)
            assert refused(lambda: raw(GARBAGE)) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "a valid bearer token is required",
            )
            assert refused(lambda: raw(GARBAGE, metadata=READ)) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "UnloadModel needs an admin token",
            )
            code, details = refused(lambda: raw(GARBAGE, metadata=ADMIN))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert details.startswith("request is not a valid protobuf message: ")
        assert detector.terminate() == 0
    finally:
        detector.kill()
    admin = {"audit": True, "principal": "ops", "service": "detector"}
    assert audits(detector) == [
        {**admin, "rpc": "LoadModel", "model": "m", "version": 1, "code": "OK"},
        {**admin, "rpc": "LoadModel", "model": "m", "version": 2, "code": "OK"},
        {**admin, "rpc": "UnloadModel", "model": "m", "version": 2, "code": "OK"},
        {**admin, "rpc": "LoadModel", "model": shown("x" * 1000), "version": 3, "code": "NOT_FOUND"},
        {**admin, "principal": "anonymous", "rpc": "UnloadModel", "code": "UNAUTHENTICATED"},
        {**admin, "principal": "dashboard", "rpc": "UnloadModel", "code": "PERMISSION_DENIED"},
        {**admin, "rpc": "UnloadModel", "code": "INVALID_ARGUMENT"},
    ]


def run_job(stub: trainer_pb2_grpc.TrainerStub, request: trainer_pb2.TrainRequest) -> trainer_pb2.Job:
    job = stub.Train(request, metadata=ADMIN).job
    for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), metadata=READ, timeout=120):
        job = update.job
    return job


@pytest.mark.slow
def test_trainer_audit_lines_name_the_dataset_and_the_version(data_volume, repository, token_files):
    spec = {"sources": [{"path": "*.csv"}], "retrain": {"policy": "manual"}, "min_samples": 100}
    datasets.write_dataset(data_volume, "audited", spec, {"a.csv": datasets.sensor_frame(400)})
    trainer = guarded(
        "oddity.trainer.main",
        token_files,
        *("--data-volume", str(data_volume), "--model-repository", str(repository), "--no-watch"),
    )
    try:
        trainer.wait_ready("oddity.v1.Trainer")
        with channel(trainer.target) as ch:
            stub = trainer_pb2_grpc.TrainerStub(ch)
            first = run_job(stub, trainer_pb2.TrainRequest(dataset="audited"))
            second = run_job(stub, trainer_pb2.TrainRequest(dataset="audited", force=True))
            assert (first.published_version, second.published_version) == (1, 2)
            rolled = stub.Rollback(trainer_pb2.RollbackRequest(dataset="audited", version=1), metadata=ADMIN)
            assert (rolled.version, rolled.restored_from) == (3, 1)
            moved = stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="audited", percentile=99), metadata=ADMIN)
            assert moved.version == 4
            not_kept = trainer_pb2.RollbackRequest(dataset="audited", version=42)
            assert refused(lambda: stub.Rollback(not_kept, metadata=ADMIN))[0] == grpc.StatusCode.NOT_FOUND
            long_name = trainer_pb2.TrainRequest(dataset="y" * 1000)
            assert refused(lambda: stub.Train(long_name, metadata=ADMIN))[0] == grpc.StatusCode.NOT_FOUND
        assert trainer.terminate() == 0
    finally:
        trainer.kill()
    admin = {"audit": True, "principal": "ops", "service": "trainer", "dataset": "audited"}
    assert audits(trainer) == [
        {**admin, "rpc": "Train", "job": first.id, "code": "OK"},
        {**admin, "rpc": "Train", "job": second.id, "code": "OK"},
        {**admin, "rpc": "Rollback", "version": 3, "restored_from": 1, "code": "OK"},
        {**admin, "rpc": "SetThreshold", "percentile": 99.0, "version": 4, "code": "OK"},
        {**admin, "rpc": "Rollback", "restored_from": 42, "code": "NOT_FOUND"},
        {**admin, "rpc": "Train", "dataset": shown("y" * 1000), "code": "NOT_FOUND"},
    ]


def test_without_tokens_garbage_is_invalid_and_counts_against_the_rate_limit(repository):
    """Burst 2 at 0.01 a second: two undecodable calls are admitted and refused as such, the
    third is over the rate, before its bytes are judged."""
    detector = start_detector(repository, rate_limit_per_client=0.01, rate_limit_burst=2)
    try:
        raw = detector.channel.unary_unary(
            "/oddity.v1.Detector/UnloadModel", request_serializer=None, response_deserializer=None
        )
        codes = [refused(lambda: raw(GARBAGE, timeout=10))[0] for _ in range(3)]
        assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
    finally:
        detector.close()
