"""Hot-swap cost and memory over many publish-and-swap cycles.

    python -m bench.swap_memory [--cycles 1000] [--clients 4]

A detector process serves a 769 -> 256 -> 64 -> 256 -> 769 autoencoder while client
threads send one-row Detect without pause. Each cycle publishes a new version of the same
size and calls LoadModel. Reported: resident memory after warm-up and every 100 cycles,
LoadModel latency (verify + load + warm-up + swap), and failed requests (must be 0).
The baseline is the detector's own memory after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psutil

from bench.machine import describe
from oddity.trainer import bundle_writer
from oddity.v1 import detector_pb2, detector_pb2_grpc
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel

D = 769


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(describe(), flush=True)
    fitted = [models.timing_group(models.random_autoencoder(D, (256, 64, 256), seed=s)) for s in range(2)]
    row = np.random.default_rng(0).normal(size=(1, D)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"
        repository.mkdir()
        models.publish_simple(repository, "swap", fitted[0], dimension=D)
        detector = ServiceProcess(
            "oddity.detector.main", ["--model-repository", str(repository), "--poll-interval-seconds", "3600"]
        ).start()
        detector.wait_ready("oddity.v1.Detector")
        process = psutil.Process(detector.proc.pid)
        stop = threading.Event()
        served, failures = [0], []

        def client() -> None:
            with channel(detector.target) as ch:
                stub = detector_pb2_grpc.DetectorStub(ch)
                request = detect_request("swap", row)
                while not stop.is_set():
                    try:
                        stub.Detect(request, timeout=30)
                        served[0] += 1
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code()}: {exc.details()}")

        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        load_ms: list[float] = []
        try:
            with channel(detector.target) as ch:
                stub = detector_pb2_grpc.DetectorStub(ch)
                baseline = 0
                for i in range(args.warmup + args.cycles):
                    version = models.publish_simple(repository, "swap", fitted[i % 2], dimension=D)
                    start = time.perf_counter()
                    status = stub.LoadModel(detector_pb2.LoadModelRequest(model="swap"), timeout=60).status
                    load_ms.append((time.perf_counter() - start) * 1000)
                    assert status.serving_version == version
                    bundle_writer.prune_versions(repository / "swap", keep=3)
                    done = i + 1 - args.warmup
                    if done == 0:
                        baseline = process.memory_info().rss
                        print(f"after {args.warmup} warm-up swaps: rss {baseline / 2**20:.1f} MiB (baseline)")
                    elif done > 0 and done % 100 == 0:
                        rss = process.memory_info().rss
                        print(f"after {done:>5} swaps: rss {rss / 2**20:.1f} MiB ({(rss - baseline) / baseline:+.1%})")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
            detector.terminate()
    measured = load_ms[args.warmup :]
    print(
        f"LoadModel (verify+load+warm-up+swap) p50 {statistics.median(measured):.1f} ms, "
        f"p99 {np.percentile(measured, 99):.1f} ms; {served[0]} requests served during swaps, "
        f"{len(failures)} failed"
    )
    if failures:
        print("failures:", failures[:5])


if __name__ == "__main__":
    main()
