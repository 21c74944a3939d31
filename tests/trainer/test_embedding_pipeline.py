"""A job's embed calls in flight: `depth` at once, never more, the results in the items' order,
and after a failure no further call starts."""

import threading

import pytest

from oddity.trainer.item_datasets import FileContents, in_order

DEPTH = 3


class Calls:
    """Work that records how many calls run at once; each call waits until `DEPTH` of them run
    together (a barrier), so a pipeline that keeps fewer in flight fails the barrier."""

    def __init__(self, *, together: bool = True, fail_at: int | None = None) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: list[int] = []
        self.barrier = threading.Barrier(DEPTH, timeout=30) if together else None
        self.fail_at = fail_at

    def __call__(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(item)
        try:
            if self.barrier is not None:
                self.barrier.wait()
            if item == self.fail_at:
                raise ValueError(f"item {item}")
            return item * 10
        finally:
            with self.lock:
                self.running -= 1


def test_depth_calls_run_at_once_and_results_come_in_order():
    calls = Calls()
    items = list(range(4 * DEPTH))
    assert list(in_order(calls, items, DEPTH)) == [i * 10 for i in items]
    assert calls.most == DEPTH


def test_calls_ahead_of_the_consumer_are_bounded():
    calls = Calls()
    results = in_order(calls, range(4 * DEPTH), DEPTH)
    assert next(results) == 0
    # While the consumer holds the first result, the calls started are those of the first
    # DEPTH items: the next one starts when the consumer asks for the next result.
    with calls.lock:
        assert sorted(calls.started) == list(range(DEPTH))
    results.close()


def test_a_failure_is_raised_at_its_item_and_later_items_never_start():
    calls = Calls(together=False, fail_at=1)
    results = in_order(calls, range(5 * DEPTH), DEPTH)
    assert next(results) == 0
    with pytest.raises(ValueError, match="item 1"):
        next(results)
    # Raised when item 1's result was due: by then items up to DEPTH had been handed to the
    # threads (DEPTH itself may have been cancelled before it started); none after.
    assert set(calls.started) <= set(range(DEPTH + 1))
    assert set(range(2)) <= set(calls.started)


def test_depth_one_runs_each_call_in_turn_on_the_callers_thread():
    threads = []

    def work(item: int) -> int:
        threads.append(threading.current_thread())
        return item + 1

    assert list(in_order(work, [1, 2, 3], 1)) == [2, 3, 4]
    assert set(threads) == {threading.current_thread()}


def test_image_files_are_read_when_asked_for_and_an_unreadable_one_reads_empty(tmp_path):
    first, second = tmp_path / "a.png", tmp_path / "b.png"
    first.write_bytes(b"first")
    second.write_bytes(b"second")
    contents = FileContents([first, second])
    first.write_bytes(b"first, changed")  # nothing was read when the list was made
    assert len(contents) == 2
    assert contents[0] == b"first, changed"
    assert contents[0:2] == [b"first, changed", b"second"]
    second.unlink()  # gone after listing: empty bytes, which the embedder refuses (dropped, counted)
    assert contents[1] == b""
