"""Client of a detector's admin API, for the trainer: load a newly published version now.

Reason to change: the Detector's model-management API.
"""

from __future__ import annotations

from oddity.common.clients.channel import RemoteService
from oddity.v1 import detector_pb2, detector_pb2_grpc

SERVICE = detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name


class DetectorAdminClient(RemoteService):
    service = SERVICE
    label = "detector"

    stub_class = detector_pb2_grpc.DetectorStub

    async def load_model(self, model: str, version: int = 0, *, request_id: str | None = None) -> int:
        """LoadModel; returns the version the detector serves afterwards."""
        response = await self._call(
            "LoadModel", detector_pb2.LoadModelRequest(model=model, version=version), request_id=request_id
        )
        return response.status.serving_version
