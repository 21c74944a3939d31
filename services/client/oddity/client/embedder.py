"""Synchronous client of the embedder: images and texts in, vectors out.

    with EmbedderClient("127.0.0.1:50051") as embedder:
        vectors = embedder.embed(images=[Path("cat.png")])  # [items, dimension] float32

Reason to change: the Embedder API, as SDK callers see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from oddity.client.connection import ServiceClient
from oddity.common.clients.embedder import EmbedderModel
from oddity.common.tensors import tensor_to_array
from oddity.v1 import embedder_pb2, embedder_pb2_grpc


class EmbedderClient(ServiceClient):
    service = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name
    label = "embedder"
    stub_class = embedder_pb2_grpc.EmbedderStub

    def embed(
        self, *, images: Sequence[bytes | Path | str] = (), texts: Sequence[str] = (), model: str | None = None
    ) -> np.ndarray:
        """Vectors [items, dimension] (images first, then texts) from `model` (None: the default)."""
        items = [embedder_pb2.EmbedItem(image=i if isinstance(i, bytes) else Path(i).read_bytes()) for i in images]
        items += [embedder_pb2.EmbedItem(text=t) for t in texts]
        response = self._call("Embed", embedder_pb2.EmbedRequest(model=model or "", items=items))
        return tensor_to_array(response.embeddings, field="embeddings")

    def models(self, model: str | None = None) -> list[EmbedderModel]:
        """The served models (or the one named)."""
        response = self._call("GetInfo", embedder_pb2.GetInfoRequest(model=model or ""))
        return [EmbedderModel.from_proto(m) for m in response.models]
