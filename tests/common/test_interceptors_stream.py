"""A client that stops reading a server stream: CANCELLED, and no error in the server log."""

import asyncio
import json

import grpc

from oddity.common.interceptors import ServerInterceptor
from oddity.common.metrics import RpcMetrics, new_metrics_registry
from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets
from tests.support.waiting import wait_for


def test_a_client_cancelling_watch_job_is_not_an_error(data_volume, repository, capfd):
    spec = datasets.autoencoder_spec(
        model={"kind": "autoencoder", "params": {"epochs": 200, "patience": 200}}, retrain={"policy": "manual"}
    )
    datasets.write_dataset(data_volume, "long", spec, {"rows.csv": datasets.sensor_frame(2000)})
    trainer = start_trainer(data_volume, repository)
    try:
        job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset="long")).job
        stream = trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=60)
        first = next(stream)
        assert first.job.id == job.id
        stream.cancel()  # the client stops reading while the job runs on
        try:
            next(stream)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.CANCELLED
        assert wait_for(
            lambda: (
                trainer.metric(
                    "oddity_grpc_requests_total", service="oddity.v1.Trainer", method="WatchJob", code="CANCELLED"
                )
                == 1
            )
        )
    finally:
        trainer.close()
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("level") in ("error", "critical")], lines




def test_a_stream_closed_mid_way_is_cancelled_without_an_error_log(capfd):
    """grpc closes a server stream's generator (GeneratorExit at its yield) when the client is
    gone while a message is on its way: CANCELLED, the handler's own stream closed too."""
    registry = new_metrics_registry(process_metrics=False)
    interceptor = ServerInterceptor(RpcMetrics(registry))
    closed = []

    async def updates(request, context):
        try:
            for i in range(100):
                yield i
                await asyncio.sleep(0)
        finally:
            closed.append(True)

    async def run() -> None:
        async def continuation(details):
            return grpc.unary_stream_rpc_method_handler(updates)

        handler = await interceptor.intercept_service(continuation, _Details("/oddity.v1.Test/Watch"))
        stream = handler.unary_stream(b"", _Context())
        assert await anext(stream) == 0
        await stream.aclose()  # the client stopped reading

    asyncio.run(run())
    assert closed == [True]
    assert (
        registry.get_sample_value(
            "oddity_grpc_requests_total", {"service": "oddity.v1.Test", "method": "Watch", "code": "CANCELLED"}
        )
        == 1
    )
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("level") in ("error", "critical")], lines


class _Details:
    def __init__(self, method: str) -> None:
        self.method = method


class _Context:
    def invocation_metadata(self):
        return ()

    async def abort(self, code, details):
        raise AssertionError(f"aborted a closed stream: {code} {details}")
