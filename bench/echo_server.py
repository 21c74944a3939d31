"""The transport ceiling: a grpc.aio server that answers Detect at once with a fixed reply.

    python -m bench.echo_server --port 0   # prints "port N" when ready

Same server options as the services (message limits, no SO_REUSEPORT), no interceptors,
no work: what one-row calls cost in gRPC alone.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from oddity.v1 import detector_pb2

REPLY = detector_pb2.DetectResponse(
    model="echo",
    model_version=1,
    kind="echo",
    scores=[0.1],
    normalized_scores=[0.5],
    is_anomaly=[False],
    thresholds=[1.0],
    confidences=[0.5],
    groups=["all"],
    fallback=[False],
).SerializeToString()


async def _reply(request: bytes, context) -> bytes:
    return REPLY


async def serve(port: int) -> None:
    limit = 256 * 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),
        ]
    )
    handler = grpc.method_handlers_generic_handler(
        "oddity.v1.Detector", {"Detect": grpc.unary_unary_rpc_method_handler(_reply)}
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"port {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
