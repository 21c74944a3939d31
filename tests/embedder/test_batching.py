"""The dynamic batcher on its own: gathering, splitting, and failing every waiting caller."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from oddity.common.errors import Internal
from oddity.embedder.batching import DynamicBatcher


def run_batches(run, payloads, **options):
    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = DynamicBatcher(run, pool, **options)
            try:
                return await asyncio.gather(*(batcher.submit(p, len(p)) for p in payloads), return_exceptions=True)
            finally:
                await batcher.close()

    return asyncio.run(main())


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    calls = []

    def run(payloads):
        calls.append(sum(len(p) for p in payloads))
        return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 1) for p in payloads])

    payloads = [[i * 10 + k for k in range(1 + i % 3)] for i in range(10)]
    results = run_batches(run, payloads, max_batch_size=8, max_wait=0.05)
    for payload, rows in zip(payloads, results, strict=True):
        np.testing.assert_array_equal(rows.ravel(), payload)
    assert max(calls) <= 8 and len(calls) < len(payloads)


def test_a_failed_batch_fails_every_waiting_caller_with_the_reason():
    def run(payloads):
        raise RuntimeError("out of memory in the encoder")

    results = run_batches(run, [[1], [2], [3]], max_batch_size=8, max_wait=0.05)
    assert all(isinstance(r, Internal) for r in results)
    assert all("out of memory in the encoder" in r.message and "batch of 3 items" in r.message for r in results)


def test_the_batcher_keeps_working_after_a_failure():
    state = {"fail": True}

    def run(payloads):
        if state.pop("fail", False):
            raise ValueError("bad batch")
        return np.ones((sum(len(p) for p in payloads), 2), np.float32)

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=4, max_wait=0.01)
            with pytest.raises(Internal):
                await batcher.submit([1], 1)
            rows = await batcher.submit([1, 2], 2)
            await batcher.close()
            return rows

    assert asyncio.run(main()).shape == (2, 2)


def test_a_cancelled_caller_is_dropped_from_its_batch():
    batches = []

    def run(payloads):
        batches.append([list(p) for p in payloads])
        return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 1) for p in payloads])

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = DynamicBatcher(run, pool, max_batch_size=8, max_wait=0.3)
            try:
                calls = [asyncio.create_task(batcher.submit([value], 1)) for value in (1, 2, 3)]
                await asyncio.sleep(0.05)  # all three wait in the gathering batch
                calls[1].cancel()
                return await asyncio.gather(calls[0], calls[2])
            finally:
                await batcher.close()

    first, third = asyncio.run(main())
    assert batches == [[[1], [3]]]
    assert (first.ravel().tolist(), third.ravel().tolist()) == ([1.0], [3.0])


def test_the_next_batch_is_prepared_while_the_current_one_runs():
    import threading

    prepared: list[list[int]] = []
    second_prepared = threading.Event()
    overlapped = []

    def prepare(payloads):
        prepared.append([v for p in payloads for v in p])
        if len(prepared) == 2:
            second_prepared.set()
        return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 1) for p in payloads])

    def run(inputs):
        if not overlapped:  # the first batch holds the worker until the second is prepared
            overlapped.append(second_prepared.wait(timeout=30))
        return inputs

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=1) as prep:
            batcher = DynamicBatcher(run, pool, prepare=prepare, prepare_executor=prep, max_batch_size=2, max_wait=0)
            try:
                return await asyncio.gather(*(batcher.submit([v], 1) for v in range(4)))
            finally:
                await batcher.close()

    results = asyncio.run(main())
    assert overlapped == [True]
    assert [r.ravel().tolist() for r in results] == [[0.0], [1.0], [2.0], [3.0]]


def test_a_failed_preparation_fails_its_callers_and_the_batcher_goes_on():
    def prepare(payloads):
        if any(v < 0 for p in payloads for v in p):
            raise ValueError("negative item")
        return np.concatenate([np.asarray(p, dtype=np.float32).reshape(-1, 1) for p in payloads])

    async def main():
        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = DynamicBatcher(lambda x: x, pool, prepare=prepare, prepare_executor=pool, max_wait=0)
            try:
                with pytest.raises(Internal, match="negative item"):
                    await batcher.submit([-1], 1)
                return await batcher.submit([5], 1)
            finally:
                await batcher.close()

    assert asyncio.run(main()).ravel().tolist() == [5.0]
