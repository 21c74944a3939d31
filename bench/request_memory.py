"""The detector's memory for one large Detect, against the run memory budget.

    python -m bench.request_memory [--rows 65536] [--reference 4000 20000] [--budget-mb 128]

For each reference size, a kNN graph (12 features) is published twice: as the trainer
publishes it, declaring its scratch memory per row, and as a bundle from before that
declaration (the baseline: runs of 1,024 rows whatever they cost). A detector process serves
each; after a one-row warm-up, one request of --rows rows is sent. Reported: the declared cost
per row, the peak resident memory above idle during the call (VmHWM, reset at idle), what
stays after it, and the call's time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from bench.machine import describe
from oddity.trainer.learners.knn import KnnLearner
from oddity.v1 import detector_pb2_grpc
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel

D = 12
MB = 1 << 20


def publish(repository: Path, reference: int, declared: bool) -> int:
    rows = np.random.default_rng(0).normal(size=(reference, D)).astype(np.float32)
    graph = KnnLearner(max_reference=reference).fit(rows).to_onnx()
    models.publish_simple(repository, "knn", models.timing_group(graph), dimension=D)
    manifest_file = repository / "knn" / "1" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    cost = int(manifest["groups"][0]["scratchBytesPerRow"])
    if not declared:
        del manifest["groups"][0]["scratchBytesPerRow"]
        manifest_file.write_text(json.dumps(manifest))
    return cost


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


def measure(reference: int, declared: bool, rows: int, budget_mb: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        cost = publish(repository, reference, declared)
        process = ServiceProcess(
            "oddity.detector.main", ["--model-repository", str(repository), "--run-memory-budget-mb", str(budget_mb)]
        ).start()
        try:
            process.wait_ready("oddity.v1.Detector")
            batch = np.random.default_rng(1).normal(size=(rows, D)).astype(np.float32)
            with channel(process.target) as ch:
                stub = detector_pb2_grpc.DetectorStub(ch)
                stub.Detect(detect_request("knn", batch[:1]), timeout=60)
                detector = psutil.Process(process.proc.pid)
                idle = detector.memory_info().rss
                Path(f"/proc/{process.proc.pid}/clear_refs").write_text("5")
                start = time.perf_counter()
                stub.Detect(detect_request("knn", batch), timeout=600)
                seconds = time.perf_counter() - start
                kept = detector.memory_info().rss - idle
                peak = peak_rss(process.proc.pid) - idle
        finally:
            process.kill()
    return {"cost": cost, "idle": idle / MB, "peak": peak / MB, "kept": kept / MB, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--reference", type=int, nargs="+", default=[4000, 20000])
    parser.add_argument("--budget-mb", type=int, default=128)
    args = parser.parse_args()
    print(describe(), flush=True)
    print(f"one Detect of {args.rows:,} rows x {D} features; run memory budget {args.budget_mb} MB")
    print(f"{'reference':>9} {'bundle':>10} {'KB/row':>7} {'idle MB':>8} {'peak+ MB':>9} {'kept MB':>8} {'s':>6}")
    for reference in args.reference:
        figures = {}
        for declared in (False, True):
            f = figures[declared] = measure(reference, declared, args.rows, args.budget_mb)
            label = "declared" if declared else "undeclared"
            print(
                f"{reference:>9,} {label:>10} {f['cost'] / 1024:>7.0f} {f['idle']:>8.0f} {f['peak']:>9.0f} "
                f"{f['kept']:>8.0f} {f['seconds']:>6.2f}",
                flush=True,
            )
        base, new = figures[False], figures[True]
        print(
            f"{'':>9} declared/undeclared: peak {new['peak'] / max(base['peak'], 1):.2f}x, "
            f"time {new['seconds'] / base['seconds']:.2f}x"
        )


if __name__ == "__main__":
    main()
