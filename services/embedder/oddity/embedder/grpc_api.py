"""gRPC front end of the embedder: protobuf in, domain call, protobuf out.

Reason to change: the Embedder protobuf API.
"""

from __future__ import annotations

from oddity.common.tensors import array_to_tensor
from oddity.embedder.runtime import Item
from oddity.embedder.service import EmbedderService
from oddity.v1 import embedder_pb2, embedder_pb2_grpc


def items_from_proto(request: embedder_pb2.EmbedRequest) -> list[Item]:
    items = []
    for item in request.items:
        kind = item.WhichOneof("content")
        items.append(Item(image=item.image) if kind == "image" else Item(text=item.text if kind else None))
    return items


class EmbedderServicer(embedder_pb2_grpc.EmbedderServicer):
    def __init__(self, service: EmbedderService) -> None:
        self._service = service

    async def _embed(self, request: embedder_pb2.EmbedRequest) -> embedder_pb2.EmbedResponse:
        model, rows = await self._service.embed(request.model, items_from_proto(request))
        return embedder_pb2.EmbedResponse(
            model=model.name,
            model_id=model.meta["model_id"],
            revision=model.meta["revision"],
            embeddings=array_to_tensor(rows),
        )

    async def Embed(self, request, context):
        return await self._embed(request)

    async def EmbedStream(self, request_iterator, context):
        async for message in request_iterator:
            yield embedder_pb2.EmbedStreamResponse(response=await self._embed(message.request))

    async def GetInfo(self, request, context):
        return embedder_pb2.GetInfoResponse(
            models=[embedder_pb2.ModelInfo(**info) for info in self._service.info(request.model)]
        )
