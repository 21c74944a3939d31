"""A closed-loop load generator: `concurrency` callers, each sending the next request as
soon as the last one returns, for a fixed time. Requests are serialized once up front and
replies are not parsed, so the client spends its CPU on transport only (the same for every
server it is pointed at)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

LIMIT = 256 * 1024 * 1024


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    server_cpu_seconds: float = float("nan")  # the server process's CPU while measuring (given its pid)

    @property
    def server_cpu_us_per_call(self) -> float:
        return self.server_cpu_seconds / self.requests * 1e6 if self.requests else float("nan")

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        return float(np.percentile(self.latencies_ms, p)) if len(self.latencies_ms) else float("nan")


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _run(
    target: str, method: str, payload: bytes, concurrency: int, seconds: float, warmup: float, server_pid: int | None
) -> LoadResult:
    options = [("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(method)  # bytes in, bytes out
        await call(payload, timeout=60)
        latencies: list[float] = []
        errors = 0
        measuring = False
        stop_at = time.perf_counter() + warmup + seconds

        async def caller() -> None:
            nonlocal errors
            while True:
                start = time.perf_counter()
                if start >= stop_at:
                    return
                try:
                    await call(payload, timeout=60)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                if measuring:
                    latencies.append(time.perf_counter() - start)

        tasks = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        begin, cpu = time.perf_counter(), process_cpu_seconds(server_pid)
        await asyncio.gather(*tasks)
        elapsed, cpu = time.perf_counter() - begin, process_cpu_seconds(server_pid) - cpu
    return LoadResult(len(latencies), errors, elapsed, np.array(latencies) * 1000, cpu)


def run_load(
    target: str,
    method: str,
    payload: bytes,
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 0.5,
    server_pid: int | None = None,
) -> LoadResult:
    """`server_pid`: also measure that process's CPU time while measuring (the server's cost per call)."""
    return asyncio.run(_run(target, method, payload, concurrency, seconds, warmup, server_pid))


def run_mixed(
    target: str, method: str, loads: list[tuple[bytes, int]], *, seconds: float, warmup: float = 0.5
) -> list[LoadResult]:
    """Several closed loops at once against one server, each (payload, concurrency) on its own
    channel, as separate clients would; one result per load."""

    async def together() -> list[LoadResult]:
        runs = (_run(target, method, payload, concurrency, seconds, warmup, None) for payload, concurrency in loads)
        return list(await asyncio.gather(*runs))

    return asyncio.run(together())
