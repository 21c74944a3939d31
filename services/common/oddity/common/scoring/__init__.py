"""Scoring a published version's rows: routing (`routing`), ONNX Runtime sessions with one
set of options (`sessions`), scores to decisions (`scores`) and a version's scoring whole
(`version`). numpy and onnxruntime only: the detector serves with it, and in-process scorers
(`oddity.client.bundle_scoring`, Spark's executors) give exactly the detector's answers with it.

    from oddity.common import bundle, scoring
    scorer = scoring.VersionScorer(bundle.load_verified_version(repository, "sensors", 3))
    scores = scorer.score(rows, routing_values)  # rows [N, D] float32 in the manifest's order
"""

from oddity.common.scoring.routing import GroupBounds, Router, RoutingValues
from oddity.common.scoring.scores import (
    GroupScorer,
    ModelScorer,
    Scores,
    confidence,
    normalize,
    threshold_at,
    top_contributions,
)
from oddity.common.scoring.sessions import (
    GroupSessions,
    ModelLoadError,
    SessionConfig,
    load_sessions,
    run_rows,
)
from oddity.common.scoring.version import VersionScorer

__all__ = [
    "GroupBounds",
    "GroupScorer",
    "GroupSessions",
    "ModelLoadError",
    "ModelScorer",
    "Router",
    "RoutingValues",
    "Scores",
    "SessionConfig",
    "VersionScorer",
    "confidence",
    "load_sessions",
    "normalize",
    "run_rows",
    "threshold_at",
    "top_contributions",
]
