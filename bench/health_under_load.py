"""Health checks beside wide Detect batches: does scoring keep the detector's event loop free?

    python -m bench.health_under_load [--seconds 6] [--rounds 3] [--policies inline,default]

A kNN model over 769 features with 20,000 reference rows (the largest reference the trainer
keeps) costs about 15 million multiply-adds per row scored, so a micro-batch of 256 such rows
scored on the event loop holds it for tens of milliseconds, and every other call on that
server (grpc.health.v1 Check, one-row Detects) waits behind it.

Per scenario (rows per Detect x callers; `idle`: no load), a separate process sends Detect
requests in closed loops while this one sends a health Check every 5 ms to the same server
and records its latency. Each policy is a detector process with its own flags:

    inline   the batcher before issue 21, as the in-run baseline: micro-batches capped at 256
             rows only, every batch scored on the event loop
    default  the detector's defaults: batches close at 256 rows or 65,536 values, and those over
             32,768 values or expected to take over 2 ms of CPU (from the model's recent
             batches) are scored on a thread of their own, beside the event loop

Requests above `--inline-max-values` (256 x 769 = 196,864 values > 32,768) already went to the
workers alone; the batcher's case is many smaller requests that coalesce into wide batches
(32 x 8 and 8 x 32: up to 256 rows of 769 per batch). Figures are medians over `rounds`,
policies alternating within each round.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from bench.loadgen import LoadResult, run_load
from bench.machine import describe
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess

D = 769
REFERENCE_ROWS = 20_000
MODEL = "wide-knn"
METHOD = "/oddity.v1.Detector/Detect"
HEALTH = "/grpc.health.v1.Health/Check"
CHECK_EVERY = 0.005  # seconds between one Check's answer and the next Check
SCENARIOS = ["idle", "256x4", "32x8", "8x32"]  # rows per request x callers
HUGE = str(2**40)
POLICIES = {
    "inline": ["--max-batch-values", HUGE, "--inline-max-batch-values", HUGE, "--inline-max-batch-ms", HUGE],
    "default": [],
}


def knn_graph() -> bytes:
    from oddity.trainer.learners import make_learner

    rows = models.normal_rows(REFERENCE_ROWS, D, seed=0)
    return make_learner("knn", {"max_reference": REFERENCE_ROWS}).fit(rows).to_onnx()


def _load(target: str, payload: bytes, callers: int, seconds: float) -> LoadResult:
    """In the load process: tell the parent it starts, then run the closed loops."""
    assert _STARTED is not None
    _STARTED.set()
    return run_load(target, METHOD, payload, concurrency=callers, seconds=seconds, warmup=1.0)


async def _checks(target: str, seconds: float) -> np.ndarray:
    request = health_pb2.HealthCheckRequest(service="oddity.v1.Detector").SerializeToString()
    latencies = []
    async with grpc.aio.insecure_channel(target) as channel:
        check = channel.unary_unary(HEALTH)
        await check(request, timeout=10)
        stop_at = time.perf_counter() + seconds
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await check(request, timeout=10)
            latencies.append(time.perf_counter() - start)
            await asyncio.sleep(CHECK_EVERY)
    return np.array(latencies) * 1000


def measure(target: str, scenario: str, rows: np.ndarray, seconds: float, pool) -> dict[str, float]:
    """Health-check p50/p99/max (ms) during the scenario; Detect rows/s and p99 under load."""
    if scenario == "idle":
        health = asyncio.run(_checks(target, seconds))
        return {"p50": float(np.percentile(health, 50)), "p99": float(np.percentile(health, 99)), "max": health.max()}
    batch, callers = (int(v) for v in scenario.split("x"))
    payload = detect_request(MODEL, rows[:batch]).SerializeToString()
    assert _STARTED is not None
    _STARTED.clear()
    load = pool.apply_async(_load, (target, payload, callers, seconds + 1.0))
    _STARTED.wait(60)
    time.sleep(1.5)  # the load's connection and warm-up
    health = asyncio.run(_checks(target, seconds - 0.5))
    result: LoadResult = load.get(timeout=600)
    assert result.errors == 0, f"{scenario}: {result.errors} failed Detect calls"
    return {
        "p50": float(np.percentile(health, 50)),
        "p99": float(np.percentile(health, 99)),
        "max": float(health.max()),
        "rows/s": result.rps * batch,
        "detect p99": result.percentile(99),
    }


# Set by the load process when it starts a scenario (shared with it when the pool starts it).
_STARTED = None


def _share(event) -> None:
    global _STARTED
    _STARTED = event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per scenario, policy and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="rows x callers list, or idle")
    parser.add_argument("--policies", default=",".join(POLICIES), help=f"of {sorted(POLICIES)}")
    parser.add_argument("--detector-arg", action="append", default=[], help="extra oddity-detector flag (repeatable)")
    args = parser.parse_args()
    print(describe(), flush=True)
    scenarios = args.scenarios.split(",")
    policies = args.policies.split(",")
    print(f"kNN over {D} features, {REFERENCE_ROWS:,} reference rows; health Check every {CHECK_EVERY * 1000:.0f} ms")
    print(f"{args.rounds} rounds x {args.seconds:g} s per scenario and policy", flush=True)

    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    context = multiprocessing.get_context("spawn")
    global _STARTED
    _STARTED = context.Event()
    with tempfile.TemporaryDirectory() as tmp, context.Pool(1, initializer=_share, initargs=(_STARTED,)) as pool:
        repository = Path(tmp) / "models"
        repository.mkdir()
        models.publish_simple(repository, MODEL, models.timing_group(knn_graph()), dimension=D)
        rows = np.random.default_rng(1).normal(size=(256, D)).astype(np.float32)
        detectors = {}
        try:
            for policy in policies:
                detector = ServiceProcess(
                    "oddity.detector.main",
                    ["--model-repository", str(repository), *POLICIES[policy], *args.detector_arg],
                ).start()
                detectors[policy] = detector
                detector.wait_ready("oddity.v1.Detector")
            for round_ in range(args.rounds):
                for scenario in scenarios:
                    for policy, detector in detectors.items():
                        figures = measure(detector.target, scenario, rows, args.seconds, pool)
                        results.setdefault((scenario, policy), []).append(figures)
                print(f"  round {round_ + 1} done", flush=True)
        finally:
            for detector in detectors.values():
                detector.terminate()

    print("\nhealth Check latency (ms) beside the load; Detect rows/s and p99 (ms) (medians)")
    print(f"  {'scenario':>8} {'policy':>8} | {'p50':>6} {'p99':>7} {'max':>7} | {'rows/s':>8} {'Detect p99':>10}")
    for scenario in scenarios:
        for policy in policies:
            runs = results[scenario, policy]

            def med(key: str, runs=runs) -> float:
                return statistics.median(r[key] for r in runs) if key in runs[0] else float("nan")

            print(
                f"  {scenario:>8} {policy:>8} | {med('p50'):6.2f} {med('p99'):7.2f} {med('max'):7.1f} | "
                f"{med('rows/s'):8,.0f} {med('detect p99'):10.1f}"
            )


if __name__ == "__main__":
    main()
