"""One version's scoring, whole: its router and its groups' sessions and score tables, from a
verified version folder. The detector serves with it (`oddity.detector.model`) and in-process
scorers score with it (`oddity.client.bundle_scoring`): one implementation, the same answers.

Reason to change: what scoring a version's rows takes (routing, then the groups' scoring).
"""

from __future__ import annotations

import numpy as np

from oddity.common import bundle
from oddity.common.scoring.routing import Router, RoutingValues
from oddity.common.scoring.scores import ModelScorer, Scores
from oddity.common.scoring.sessions import SessionConfig, load_sessions


class VersionScorer:
    """Scores rows [N, D] (float32, finite, in the manifest's feature order) of one version."""

    def __init__(self, verified: bundle.VerifiedVersion, config: SessionConfig | None = None) -> None:
        config = config or SessionConfig()
        self.manifest = verified.manifest
        self.router = Router.from_manifest(verified.manifest)
        self._scorer = ModelScorer.from_manifest(
            verified.manifest, load_sessions(verified.manifest, verified.onnx, config), config
        )

    @property
    def explains(self) -> bool:
        """Whether every active group reports per-feature errors (explain_top_k works)."""
        return self._scorer.explains

    def score(
        self,
        rows: np.ndarray,
        routing_values: RoutingValues = (),
        *,
        threshold_percentile: float | None = None,
        explain_top_k: int = 0,
        bulk: bool = False,
    ) -> Scores:
        """Route, then score; `bulk` splits large calls over the config's bulk threads."""
        used, row_group, fallback = self.router.route(routing_values, rows.shape[0])
        return self._scorer.score(rows, used, row_group, fallback, threshold_percentile, explain_top_k, bulk)

    def release(self) -> None:
        """Drop the sessions."""
        self._scorer.release()
