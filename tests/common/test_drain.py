"""Shutdown under load: a real detector process gets SIGTERM while 16 callers keep calling.

gRPC core answers CANCELLED, which clients do not retry, to a call that reaches the server
in the moment of its final stop. The drain makes sure no call is on its way then: the calls
it refuses are told when to retry (after the stop), and it stops when no call has come for
a moment.

The line between the calls that succeed and those refused is the moment the server begins
draining (its 'stopping' log line), not the moment the signal is sent: a call already on its
way then is refused like a later one, with the same retryable UNAVAILABLE."""

import time
from collections import Counter

import grpc
import pytest

from bench.drain import Callers, detector, drain_began, publish_model
from oddity.common.clients.channel import RetryPolicy
from tests.support.waiting import wait_for

CALLERS = 16
# The client's retry policy with shorter backoffs: the calls refused by the drain, then
# unanswered once the server is gone, fail within a second instead of seven.
RETRY = RetryPolicy(initial_backoff_seconds=0.05, max_backoff_seconds=0.2)
OK, UNAVAILABLE = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_sigterm_under_busy_callers_cancels_no_call(repository):
    request = publish_model(repository)
    process = detector(repository, "--access-log")
    try:
        callers = Callers(process.target, request, CALLERS, RETRY).start()
        wait_for(lambda: len(callers.calls()) >= CALLERS * 20, what="calls answered before the signal")
        signalled = time.time()
        assert process.terminate() == 0
        calls = callers.stop()
    finally:
        process.kill()
    began = drain_began(process)

    codes = Counter(call.code for call in calls)
    assert set(codes) == {OK, UNAVAILABLE}, codes
    assert all(call.code == OK for call in calls if call.end < signalled)
    assert all(call.code == UNAVAILABLE for call in calls if call.start > began)
    # No call the server took was lost: each one it answered OK reached its caller as OK.
    answered = Counter(e["code"] for e in process.events("request") if e.get("rpc") == "Detect")
    assert answered["OK"] == codes[OK]
