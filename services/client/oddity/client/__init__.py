"""Oddity's Python SDK: small synchronous clients of the three services.

    from oddity.client import DetectorClient, TrainerClient, EmbedderClient
    from oddity.client import Filter, Query  # what to look for among a model's indexed items

Each client owns one gRPC channel (a context manager closes it), applies a deadline to every
call, retries UNAVAILABLE with backoff, speaks TLS and bearer tokens, and raises the domain
errors of `oddity.common.errors` (NotFound, InvalidArgument, Unavailable, ...). They are for
programs outside Oddity; the services call each other with the asyncio clients of
`oddity.common.clients` (different classes, some with the same names).

Reason to change: what the SDK exports.
"""

from oddity.client.connection import ServiceClient
from oddity.client.detection import Contribution, DetectResult
from oddity.client.detector import DetectorClient, ModelDetails, ModelStatus
from oddity.client.embedder import EmbedderClient
from oddity.client.features import FeatureLayout, ModelRows
from oddity.client.item_queries import Filter, Query
from oddity.client.item_results import (
    ClusterAssignment,
    ClusterInfo,
    ClustersResult,
    SimilarItem,
    SimilarResult,
    TagMatch,
    TagSuggestion,
    TagSuggestions,
)
from oddity.client.trainer import (
    DatasetStatus,
    GroupEvidence,
    HistoryEvent,
    Job,
    Rollback,
    ThresholdChange,
    TrainerClient,
)
from oddity.common.clients.channel import RetryPolicy
from oddity.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    OddityError,
    ResourceExhausted,
    Unavailable,
)
from oddity.common.tls import TlsFiles

__all__ = [
    "AlreadyExists",
    "ClusterAssignment",
    "ClusterInfo",
    "ClustersResult",
    "Contribution",
    "DatasetStatus",
    "DetectResult",
    "DetectorClient",
    "EmbedderClient",
    "FailedPrecondition",
    "FeatureLayout",
    "Filter",
    "GroupEvidence",
    "HistoryEvent",
    "Internal",
    "InvalidArgument",
    "Job",
    "ModelDetails",
    "ModelRows",
    "ModelStatus",
    "NotFound",
    "OddityError",
    "Query",
    "ResourceExhausted",
    "RetryPolicy",
    "Rollback",
    "ServiceClient",
    "SimilarItem",
    "SimilarResult",
    "TagMatch",
    "TagSuggestion",
    "TagSuggestions",
    "ThresholdChange",
    "TlsFiles",
    "TrainerClient",
    "Unavailable",
]
