"""A training job's view of the embedder: blocking calls from the job's worker thread onto the
shared async `EmbedderClient`, with the job id as request id (the embedder's log lines carry
it) and the patience of batch work.

The client waits for a server that is down (wait_for_ready) and retries UNAVAILABLE a few
times; a job is more patient still: an embedder that answers UNAVAILABLE while it restarts
(still loading its model) is asked again until the job's patience runs out.

- First contact (which model, what dimension; which text models): `connect_timeout` seconds,
  so a job whose embedder is missing fails soon with the reason; one that answers it is
  still loading its models is waited for as long as a batch.
- Each batch once embedding has begun: `batch_timeout` seconds, enough to wait out a restart.
- Up to `batches_in_flight` batches at once (item_datasets.embed_cached calls from that many
  threads): with several embedder replicas behind the client's address, each gets some.

Reason to change: how long and how a training job waits for the embedder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

from oddity.common.clients import EmbedderClient, EmbedderModel
from oddity.common.errors import FailedPrecondition, StillLoading, Unavailable
from oddity.trainer import job_control
from oddity.trainer.loop_calls import LoopBridge

T = TypeVar("T")

RETRY_PAUSE_SECONDS = 1.0


class JobEmbedder:
    def __init__(
        self,
        client: EmbedderClient,
        bridge: LoopBridge,
        *,
        request_id: str,
        connect_timeout: float,
        batch_timeout: float,
        batches_in_flight: int = 1,
    ) -> None:
        self.client = client
        self.batches_in_flight = batches_in_flight
        self.bridge = bridge
        self.request_id = request_id
        self.connect_timeout = connect_timeout
        self.batch_timeout = batch_timeout

    def model(self, name: str) -> EmbedderModel:
        """What the embedder serves as `name` (its dimension, modality, revision)."""
        # GetInfo's deadline is the client's default timeout, which the app sets to connect_timeout.
        models = self._patiently(lambda _: self.client.models(name, request_id=self.request_id), self.connect_timeout)
        if not models:
            raise FailedPrecondition(f"embedder at {self.client.target} does not serve {name!r}")
        return models[0]

    def models(self) -> list[EmbedderModel]:
        """Every model the embedder serves (e.g. to find a text model for text search)."""
        return self._patiently(lambda _: self.client.models(request_id=self.request_id), self.connect_timeout)

    def embed(self, model: str, modality: str, contents: Sequence[bytes]) -> np.ndarray:
        """Vectors [items, dimension]; InvalidArgument when an item is refused."""
        images = list(contents) if modality == "image" else []
        texts = [c.decode() for c in contents] if modality == "text" else []

        def call(remaining: float) -> Coroutine[Any, Any, Any]:
            return self.client.embed(model, images=images, texts=texts, timeout=remaining, request_id=self.request_id)

        return self._patiently(call, self.batch_timeout).vectors

    def _patiently(self, call: Callable[[float], Coroutine[Any, Any, T]], patience: float) -> T:
        """call(remaining seconds) until it answers; UNAVAILABLE is asked again until
        `patience` seconds have passed, then raised with how long the job waited. An embedder
        that answers it is still loading (a first export takes minutes) is waited for as long
        as a batch (`batch_timeout`), however short the patience for one that is not there."""
        start = time.monotonic()
        deadline = start + patience
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.bridge.call(call(max(remaining, 0.001)))
            except Unavailable as exc:
                job_control.check()  # a stop or a spent time budget ends the waiting too
                if isinstance(exc, StillLoading) and patience < self.batch_timeout:
                    patience, deadline = self.batch_timeout, start + self.batch_timeout
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unavailable(f"{exc.message} (the job waited {patience:g} s for the embedder)") from exc
                self.bridge.sleep(min(RETRY_PAUSE_SECONDS, remaining))
