"""The detector's client of the embedder, for DetectImages."""

from __future__ import annotations

import grpc
import numpy as np

from oddity.common.errors import InvalidArgument, ResourceExhausted, Unavailable
from oddity.common.tensors import tensor_to_array
from oddity.v1 import embedder_pb2, embedder_pb2_grpc


class EmbedderClient:
    def __init__(self, target: str, timeout: float = 10.0, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self._stub = embedder_pb2_grpc.EmbedderStub(self._channel)

    async def embed(
        self, model: str, *, images: list[bytes] = (), texts: list[str] = ()
    ) -> tuple[np.ndarray, embedder_pb2.EmbedResponse]:
        items = [embedder_pb2.EmbedItem(image=i) for i in images] + [embedder_pb2.EmbedItem(text=t) for t in texts]
        try:
            # No wait_for_ready: an embedder that is down answers UNAVAILABLE at once.
            response = await self._stub.Embed(embedder_pb2.EmbedRequest(model=model, items=items), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details()
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise InvalidArgument(details) from exc
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ResourceExhausted(f"embedder: {details}") from exc
            raise Unavailable(f"embedder at {self.target} failed: {code.name}: {details}") from exc
        return tensor_to_array(response.embeddings, field="embeddings"), response

    async def close(self) -> None:
        await self._channel.close()
