"""What both use cases (Detect's and the similarity index's) need from the embedder: the
client, and the check that its vectors come from the weights a version names.

Reason to change: how the detector calls the embedder on behalf of a served version.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from oddity.common.clients import EmbedderClient, Embeddings
from oddity.common.errors import FailedPrecondition
from oddity.v1 import manifest_pb2

# The embedder client. A callable, because a grpc.aio channel belongs to the event loop that
# creates it: the app makes the client on the serving loop at first use.
EmbedderSource = Callable[[], EmbedderClient]


def check_embedded_by(embeddings: Embeddings, source: manifest_pb2.EmbeddingSource, made: str) -> np.ndarray:
    """The vectors, when the embedder made them with the weights `source` names (model id,
    revision, dimension); else FAILED_PRECONDITION: `made` + "vectors of <the source>"."""
    vectors = embeddings.vectors
    served = (embeddings.model_id, embeddings.revision, vectors.shape[1])
    if served != (source.model_id, source.revision, source.dimension):
        raise FailedPrecondition(
            f"{made} vectors of {source.model_id} (revision {source.revision}, {source.dimension} values); "
            f"the embedder serves {served[0]} (revision {served[1]}, {served[2]} values)"
        )
    return vectors
