"""Detector speed, side by side with its baselines, in one run.

    python -m bench.detector_speed [--seconds 3] [--rounds 3]

(a) in-process ONNX Runtime rows/s for the same model (2 threads): the compute limit;
(b) an echo gRPC server that answers at once: the transport ceiling;
(c) the detector, as a separate process, on a 769 -> 256 -> 64 -> 256 -> 769 autoencoder.

Every cell is measured `rounds` times, alternating echo and detector; figures are medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.loadgen import run_load
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess

D = 769
METHOD = "/oddity.v1.Detector/Detect"
CELLS = [(1, 1), (1, 32), (256, 1), (256, 32), (4096, 1), (4096, 32)]  # (rows per request, concurrency)


def in_process_rows_per_second(model: bytes, batch: int, seconds: float) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    rows = np.random.default_rng(0).normal(size=(batch, D)).astype(np.float32)
    for _ in range(3):
        session.run(["score"], {"input": rows})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(["score"], {"input": rows})
        done += batch
    return done / (time.perf_counter() - start)


def start_echo() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.echo_server", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline().split()
    return proc, f"127.0.0.1:{line[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per cell and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--detector-arg", action="append", default=[], help="extra oddity-detector flag (repeatable)")
    parser.add_argument("--cells", default=",".join(f"{b}x{c}" for b, c in CELLS), help="rows x concurrency list")
    args = parser.parse_args()
    cells = [tuple(int(v) for v in cell.split("x")) for cell in args.cells.split(",")]

    model = models.random_autoencoder(D, (256, 64, 256))
    fitted = models.timing_group(model)
    print(f"machine: {os.cpu_count()} cores; model {D}->256->64->256->{D}; {args.rounds} rounds x {args.seconds}s")
    print("\n(a) in-process ONNX Runtime, 2 threads (compute limit)")
    limit = {}
    for batch in sorted({b for b, _ in cells}):
        limit[batch] = statistics.median(
            in_process_rows_per_second(model, batch, args.seconds) for _ in range(args.rounds)
        )
        print(f"  batch {batch:>5}: {limit[batch]:>12,.0f} rows/s")

    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp) / "models"
        repository.mkdir()
        models.publish_simple(repository, "bench", fitted, dimension=D)
        detector = ServiceProcess(
            "oddity.detector.main",
            ["--model-repository", str(repository), *args.detector_arg],
        ).start()
        detector.wait_ready("oddity.v1.Detector")
        echo, echo_target = start_echo()
        try:
            rows = np.random.default_rng(1).normal(size=(max(b for b, _ in cells), D)).astype(np.float32)
            results: dict[tuple[str, int, int], list] = {}
            for batch, concurrency in cells:
                payload = detect_request("bench", rows[:batch]).SerializeToString()
                for _ in range(args.rounds):
                    for name, target in (("echo", echo_target), ("detector", detector.target)):
                        result = run_load(target, METHOD, payload, concurrency=concurrency, seconds=args.seconds)
                        assert result.errors == 0, f"{name}: {result.errors} failed requests"
                        results.setdefault((name, batch, concurrency), []).append(result)
        finally:
            echo.terminate()
            echo.wait(timeout=30)
            detector.terminate()

    def med(name, batch, conc, attr):
        values = [getattr(r, attr) if attr == "rps" else r.percentile(attr) for r in results[(name, batch, conc)]]
        return statistics.median(values)

    print("\n(b) echo server vs (c) detector, over gRPC (medians)")
    header = (
        f"  {'rows':>5} {'conc':>4} | {'echo req/s':>10} {'p50 ms':>7} {'p99 ms':>7} | {'det req/s':>10} {'rows/s':>11}"
    )
    print(header + f" {'p50 ms':>7} {'p99 ms':>7} | {'vs echo':>7} {'vs ORT':>7}")
    for batch, conc in cells:
        echo_rps, det_rps = med("echo", batch, conc, "rps"), med("detector", batch, conc, "rps")
        print(
            f"  {batch:>5} {conc:>4} | {echo_rps:>10,.0f} {med('echo', batch, conc, 50):>7.2f} "
            f"{med('echo', batch, conc, 99):>7.2f} | {det_rps:>10,.0f} {det_rps * batch:>11,.0f} "
            f"{med('detector', batch, conc, 50):>7.2f} {med('detector', batch, conc, 99):>7.2f} | "
            f"{det_rps / echo_rps:>7.0%} {det_rps * batch / limit[batch]:>7.0%}"
        )
    print("\ntargets: 1 row x 32: >= 80% of echo req/s and p99 <= 5 ms; 4096 rows: >= 50% of in-process rows/s")


if __name__ == "__main__":
    main()
