"""A loaded model version: what its manifest says, its scorer (`oddity.common.scoring`: the
routing and scoring that in-process scorers share), its similarity index (when the version
has one), and the leases that keep it alive while requests use it.

A LoadedModel is immutable once built. Requests take a lease on it; when the registry swaps
in a newer version it retires this one, and the sessions are released as soon as the last
lease is returned, so requests already running finish on the version they began with. The
index is part of the version: a swap replaces model and index together, and a leased request
sees one version's index only. A version whose index cannot be loaded is refused whole.

Reason to change: what a servable version is made of, and its lifetime (leases, retire,
release).
"""

from __future__ import annotations

import threading

import numpy as np

from oddity.common import bundle
from oddity.common.scoring import ModelLoadError, RoutingValues, Scores, SessionConfig, VersionScorer
from oddity.detector.item_index import IndexLoadError, ItemIndex
from oddity.v1 import manifest_pb2


class LoadedModel:
    """A servable model version (see module docstring)."""

    def __init__(self, verified: bundle.VerifiedVersion, config: SessionConfig) -> None:
        manifest = verified.manifest
        self.manifest = manifest
        self.name = manifest.name
        self.version = int(manifest.version)
        self.kind = manifest.kind
        self.is_classifier = manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION
        self.class_labels = list(manifest.class_labels)
        self.dimension = int(manifest.input_dimension)
        self.feature_names = list(manifest.feature_names)
        self.routing_key = manifest.routing_key
        # The index first: it is cheaper to refuse before sessions are built.
        self.similarity: ItemIndex | None = None
        if manifest.HasField("similarity"):
            try:
                self.similarity = ItemIndex.load(manifest.similarity, verified.index)
            except IndexLoadError as exc:
                raise ModelLoadError(f"similarity index: {exc}") from None
        self._scorer = VersionScorer(verified, config)
        self._lock = threading.Lock()
        self._leases = 0
        self._retired = False
        self._released = threading.Event()

    def score(
        self,
        rows: np.ndarray,
        routing_values: RoutingValues = (),
        *,
        threshold_percentile: float | None = None,
        explain_top_k: int = 0,
        bulk: bool = False,
    ) -> Scores:
        """Score validated rows [N, D] (float32, finite); `bulk` splits large calls over the
        bulk threads."""
        return self._scorer.score(
            rows, routing_values, threshold_percentile=threshold_percentile, explain_top_k=explain_top_k, bulk=bulk
        )

    # -- leases ---------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        with self._lock:
            if self._retired:
                return False
            self._leases += 1
            return True

    def add_lease(self) -> None:
        """One more lease, taken while holding one, for work that may outlive the holder's
        (a batch on a worker): granted even once retired, since the version is not released
        while a lease is held."""
        with self._lock:
            if self._leases <= 0:
                raise RuntimeError(f"no lease on {self.name} v{self.version} to add to")
            self._leases += 1

    def release(self) -> None:
        with self._lock:
            self._leases -= 1
            done = self._retired and self._leases == 0
        if done:
            self._close()

    def retire(self) -> None:
        """No new leases; the sessions go once the running requests are done."""
        with self._lock:
            self._retired = True
            done = self._leases == 0
        if done:
            self._close()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def _close(self) -> None:
        self._scorer.release()
        self._released.set()
