"""Shutdown under load: what busy callers see when the detector gets SIGTERM.

    python -m bench.drain [--runs 5] [--callers 16] [--seconds 2]

A detector process serves a small PCA model. `callers` threads, each on its own channel with
the client's retry policy (`oddity.common.clients.channel`: UNAVAILABLE retried up to 5
attempts, with the server's retry pushback honoured), send one-row Detect calls without pause.
After `seconds` of load the detector gets SIGTERM, and once it has exited a new one starts on
the same port, as in a rolling restart; the callers call on throughout. Per SIGTERM, the calls
that ended from that signal to the next one, by outcome:

    CANCELLED    gRPC core's answer to a call that reaches the server in the moment of its
                 final stop (grpc/grpc issue 41785); clients do not retry it
    UNAVAILABLE  failed after the retries: refused by the draining server and still refused,
                 or unanswered, when its last attempt came
    retried OK   succeeded on the new process after the restart (started before it was ready)
    OK           every call that succeeded, the retried ones included

Two policies take turns, SIGTERM after SIGTERM:

    immediate  `--drain-retry-after-seconds 0`: the server stops as soon as the calls in
               progress are done (the shutdown before issue 24): the in-run baseline
    drain      the detector's defaults: refused calls are told when to retry, and the server
               stops at a moment when no call is on its way
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import numpy as np

from bench.machine import describe
from oddity.client.connection import DEFAULT_TIMEOUT_SECONDS
from oddity.common.clients.channel import DEFAULT_MAX_MESSAGE_BYTES, RetryPolicy, channel_options
from oddity.v1 import detector_pb2, detector_pb2_grpc
from tests.support import models
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess

SERVICE = "oddity.v1.Detector"
MODEL = "drain"
D = 8
POLICIES = {"immediate": ["--drain-retry-after-seconds", "0"], "drain": []}


@dataclass(frozen=True)
class Call:
    start: float  # time.time() when the caller sent it
    end: float  # ... and when its outcome came back
    code: grpc.StatusCode


class Callers:
    """`count` threads, each on its own channel with `retry` (the client's policy by default),
    sending `request` to Detect without pause until stopped."""

    def __init__(
        self, target: str, request: detector_pb2.DetectRequest, count: int, retry: RetryPolicy | None = None
    ) -> None:
        self._options = channel_options(SERVICE, DEFAULT_MAX_MESSAGE_BYTES, retry or RetryPolicy())
        self._target, self._request = target, request
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._threads = [threading.Thread(target=self._call_on, daemon=True) for _ in range(count)]

    def start(self) -> Callers:
        for thread in self._threads:
            thread.start()
        return self

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def stop(self) -> list[Call]:
        """Stop calling (each caller's call in progress ends first); every call made."""
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        return self.calls()

    def _call_on(self) -> None:
        with grpc.insecure_channel(self._target, options=self._options) as channel:
            detect = detector_pb2_grpc.DetectorStub(channel).Detect
            while not self._stopping.is_set():
                start = time.time()
                try:
                    detect(self._request, timeout=DEFAULT_TIMEOUT_SECONDS)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as exc:
                    code = exc.code()
                with self._lock:
                    self._calls.append(Call(start, time.time(), code))


def publish_model(repository: Path) -> detector_pb2.DetectRequest:
    """A small PCA model in `repository`; the one-row request the callers send."""
    fit = models.fit_pca_group(models.normal_rows(300, D), components=2)
    models.publish_simple(repository, MODEL, fit, dimension=D)
    return detect_request(MODEL, models.normal_rows(1, D, seed=1))


def detector(repository: Path, *flags: str) -> ServiceProcess:
    process = ServiceProcess("oddity.detector.main", ["--model-repository", str(repository), *flags]).start()
    process.wait_ready(SERVICE)
    return process


def drain_began(process: ServiceProcess) -> float:
    """When the server began refusing calls (time.time()): its 'stopping' log line."""
    event = next(e for e in process.events("stopping") if e.get("grpc_service") == SERVICE)
    return datetime.fromisoformat(event["timestamp"]).timestamp()


@dataclass
class Restart:
    policy: str
    signalled: float  # SIGTERM sent (time.time())
    exited: float  # the old process gone
    ready: float  # the new one serving


def measure(restarts: list[Restart], calls: list[Call]) -> list[Counter]:
    """Per restart, the outcomes of the calls that ended from its signal to the next one."""
    outcomes = []
    for i, restart in enumerate(restarts):
        until = restarts[i + 1].signalled if i + 1 < len(restarts) else float("inf")
        window = [c for c in calls if restart.signalled <= c.end < until]
        counts = Counter(c.code.name for c in window)
        counts["retried OK"] = sum(
            1 for c in window if c.code == grpc.StatusCode.OK and c.start < restart.ready <= c.end
        )
        outcomes.append(counts)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="SIGTERMs per policy")
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=2.0, help="load between a restart and the next SIGTERM")
    args = parser.parse_args()
    print(describe(), flush=True)

    order = [policy for _ in range(args.runs) for policy in POLICIES]
    restarts: list[Restart] = []
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        request = publish_model(repository)
        process = detector(repository, *POLICIES[order[0]])
        port = process.port
        callers = Callers(process.target, request, args.callers).start()
        try:
            for i, policy in enumerate(order):
                time.sleep(args.seconds)
                signalled = time.time()
                code = process.terminate()
                exited = time.time()
                assert code == 0, f"{policy}: the detector exited with {code}"
                next_flags = POLICIES[order[i + 1]] if i + 1 < len(order) else POLICIES[policy]
                process = detector(repository, "--port", str(port), *next_flags)
                restarts.append(Restart(policy, signalled, exited, time.time()))
                print(f"  SIGTERM {i + 1}/{len(order)} ({policy}) done", flush=True)
            time.sleep(args.seconds)
        finally:
            calls = callers.stop()
            process.kill()

    outcomes = measure(restarts, calls)
    columns = ["CANCELLED", "UNAVAILABLE", "retried OK", "OK"]
    print(f"\n{args.callers} callers, calls by outcome per SIGTERM (from that signal to the next)")
    print(f"  {'run':>3} {'policy':>9} | " + " ".join(f"{c:>11}" for c in columns) + f" | {'other':>5} {'exit (s)':>8}")
    for i, (restart, counts) in enumerate(zip(restarts, outcomes, strict=True)):
        other = sum(n for code, n in counts.items() if code not in columns)
        cells = " ".join(f"{counts[c]:>11}" for c in columns)
        exit_seconds = restart.exited - restart.signalled
        print(f"  {i // len(POLICIES) + 1:>3} {restart.policy:>9} | {cells} | {other:>5} {exit_seconds:>8.2f}")
    for policy in POLICIES:
        cancelled = [counts["CANCELLED"] for r, counts in zip(restarts, outcomes, strict=True) if r.policy == policy]
        print(f"  {policy:>13}: CANCELLED per SIGTERM {cancelled}, mean {np.mean(cancelled):.1f}")


if __name__ == "__main__":
    main()
