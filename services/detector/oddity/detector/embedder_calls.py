"""What both use cases (Detect's and the similarity index's) need from the embedder: the
client, and vectors checked to come from the weights a version names.

Reason to change: how the detector calls the embedder on behalf of a served version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from oddity.common.clients import EmbedderClient, Embeddings
from oddity.common.clients.embedder import serving_command
from oddity.common.errors import FailedPrecondition, NotFound
from oddity.v1 import manifest_pb2

# The embedder client. A callable, because a grpc.aio channel belongs to the event loop that
# creates it: the app makes the client on the serving loop at first use.
EmbedderSource = Callable[[], EmbedderClient]


async def embed_for(
    embedder: EmbedderClient,
    source: manifest_pb2.EmbeddingSource,
    made: str,
    *,
    images: Sequence[bytes] = (),
    texts: Sequence[str] = (),
) -> Embeddings:
    """Embeddings of the items by the embedder model `source` names, refused unless they come
    from the weights that made the version: `made` + "vectors of <the source>" (e.g. "model 'x'
    v3 was trained on"). Either refusal, the embedder's own (a model it cannot load or does
    not serve) or this check's, names the `oddity up --model` that serves those weights."""
    try:
        embeddings = await embedder.embed(source.model, images=images, texts=texts)
    except (NotFound, FailedPrecondition) as exc:
        raise type(exc)(f"{exc.message}; {made} {source.model_id}: {_serving(source)} serves it") from exc
    served = (embeddings.model_id, embeddings.revision, embeddings.vectors.shape[1])
    if served != (source.model_id, source.revision, source.dimension):
        raise FailedPrecondition(
            f"{made} vectors of {source.model_id} (revision {source.revision}, {source.dimension} values); "
            f"the embedder serves {served[0]} (revision {served[1]}, {served[2]} values); "
            f"{_serving(source)} serves the weights it needs"
        )
    return embeddings


def _serving(source: manifest_pb2.EmbeddingSource) -> str:
    return f"`{serving_command(source.model, source.model_id, source.modality)}`"
