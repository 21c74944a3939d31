"""Client of the embedder: items in, vectors out (used by the detector's DetectImages and the
trainer's image and text datasets).

Reason to change: the Embedder API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from oddity.common.clients.channel import RemoteService
from oddity.common.tensors import tensor_to_array
from oddity.v1 import embedder_pb2, embedder_pb2_grpc

SERVICE = embedder_pb2.DESCRIPTOR.services_by_name["Embedder"].full_name


@dataclass(frozen=True)
class EmbedderModel:
    """What the embedder says of one served model."""

    name: str
    model_id: str
    revision: str
    precision: str
    modality: str  # "image" or "text"
    dimension: int
    is_default: bool = False

    @classmethod
    def from_proto(cls, info: embedder_pb2.ModelInfo) -> EmbedderModel:
        return cls(
            name=info.name,
            model_id=info.model_id,
            revision=info.revision,
            precision=info.precision,
            modality=info.modality,
            dimension=info.dimension,
            is_default=info.is_default,
        )


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # [items, dimension] float32
    model: str
    model_id: str
    revision: str


class EmbedderClient(RemoteService):
    service = SERVICE
    label = "embedder"

    stub_class = embedder_pb2_grpc.EmbedderStub

    async def embed(
        self,
        model: str,
        *,
        images: Sequence[bytes] = (),
        texts: Sequence[str] = (),
        timeout: float | None = None,
        request_id: str | None = None,
    ) -> Embeddings:
        items = [embedder_pb2.EmbedItem(image=i) for i in images] + [embedder_pb2.EmbedItem(text=t) for t in texts]
        response = await self._call(
            "Embed",
            embedder_pb2.EmbedRequest(model=model, items=items),
            timeout=timeout,
            request_id=request_id,
        )
        return Embeddings(
            vectors=tensor_to_array(response.embeddings, field="embeddings"),
            model=response.model,
            model_id=response.model_id,
            revision=response.revision,
        )

    async def models(
        self, model: str = "", *, timeout: float | None = None, request_id: str | None = None
    ) -> list[EmbedderModel]:
        """The served models (or the one named)."""
        response = await self._call(
            "GetInfo", embedder_pb2.GetInfoRequest(model=model), timeout=timeout, request_id=request_id
        )
        return [EmbedderModel.from_proto(m) for m in response.models]


def serving_command(name: str, model_id: str, modality: str) -> str:
    """The `oddity up` option that has a local stack's embedder serve these weights as `name`
    (what a version trained on them needs)."""
    return f"oddity up --model {name}={'text:' if modality == 'text' else ''}{model_id}"
