"""One client per remote Oddity service: deadlines, retries of UNAVAILABLE with backoff (the
gRPC service config's retryPolicy), one status mapping and request ids live here, not at the
call sites."""

from oddity.common.clients.channel import RemoteService, RetryPolicy
from oddity.common.clients.detector import DetectorAdminClient
from oddity.common.clients.embedder import EmbedderClient, EmbedderModel, Embeddings

__all__ = ["DetectorAdminClient", "EmbedderClient", "EmbedderModel", "Embeddings", "RemoteService", "RetryPolicy"]
