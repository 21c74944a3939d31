"""gRPC front end of the detector: protobuf in, domain call, protobuf out. Nothing else.

Reason to change: the Detector protobuf API (protos/oddity/v1/detector.proto).
"""

from __future__ import annotations

from oddity.common.tensors import array_to_tensor, tensor_to_array
from oddity.detector.registry import ModelStatus
from oddity.detector.service import DetectImagesInput, DetectInput, DetectorService, DetectOutput
from oddity.v1 import detector_pb2, detector_pb2_grpc


def status_to_proto(status: ModelStatus) -> detector_pb2.ModelStatus:
    return detector_pb2.ModelStatus(
        name=status.name,
        serving_version=status.serving_version,
        available_versions=status.available_versions,
        rejected_versions=status.rejected_versions,
        pinned_version=status.pinned_version,
        unloaded=status.unloaded,
        kind=status.kind,
        last_error=status.last_error,
    )


def detect_input(request: detector_pb2.DetectRequest) -> DetectInput:
    return DetectInput(
        model=request.model,
        version=request.version,
        rows=tensor_to_array(request.rows),
        feature_names=request.feature_names,
        routing_values=request.routing_values,
        threshold_percentile=request.threshold_percentile if request.HasField("threshold_percentile") else None,
        explain_top_k=request.explain_top_k,
    )


def detect_response(output: DetectOutput) -> detector_pb2.DetectResponse:
    s = output.scores
    response = detector_pb2.DetectResponse(
        model=output.model,
        model_version=output.version,
        kind=output.kind,
        scores=s.scores.tolist(),
        normalized_scores=s.normalized.tolist(),
        is_anomaly=s.is_anomaly.tolist(),
        thresholds=s.thresholds.tolist(),
        confidences=s.confidences.tolist(),
        groups=s.groups,
        fallback=s.fallback.tolist(),
    )
    if s.classes is not None and s.probabilities is not None:
        labels = output.class_labels
        response.predicted_classes.extend([labels[i] for i in s.classes.tolist()])
        response.probabilities.CopyFrom(array_to_tensor(s.probabilities))
        response.class_labels.extend(labels)
        if s.predicted_scores is not None:
            response.predicted_scores.extend(s.predicted_scores.tolist())
    if s.explanations is not None:
        indices, errors, shares = s.explanations
        names = output.feature_names
        for row_indices, row_errors, row_shares in zip(indices.tolist(), errors.tolist(), shares.tolist(), strict=True):
            explanation = response.explanations.add()
            for index, error, share in zip(row_indices, row_errors, row_shares, strict=True):
                explanation.features.add(
                    name=names[index] if names else f"#{index}", index=index, contribution=share, error=error
                )
    return response


def detect_images_input(request: detector_pb2.DetectImagesRequest) -> DetectImagesInput:
    has_extra = request.HasField("extra_features")
    return DetectImagesInput(
        model=request.model,
        images=list(request.images),
        texts=list(request.texts),
        routing_values=request.routing_values,
        extra_features=tensor_to_array(request.extra_features, field="extra_features") if has_extra else None,
        threshold_percentile=request.threshold_percentile if request.HasField("threshold_percentile") else None,
    )


class DetectorServicer(detector_pb2_grpc.DetectorServicer):
    def __init__(self, service: DetectorService) -> None:
        self._service = service

    async def Detect(self, request, context):
        return detect_response(await self._service.detect(detect_input(request)))

    async def DetectImages(self, request, context):
        output, model_id, revision = await self._service.detect_images(detect_images_input(request))
        return detector_pb2.DetectImagesResponse(
            result=detect_response(output), embedder_model_id=model_id, embedder_revision=revision
        )

    async def ListModels(self, request, context):
        return detector_pb2.ListModelsResponse(models=[status_to_proto(s) for s in self._service.list_models()])

    async def GetModel(self, request, context):
        status = self._service.get_model(request.model)
        return detector_pb2.GetModelResponse(status=status_to_proto(status), manifest=status.manifest)

    async def LoadModel(self, request, context):
        status = await self._service.load_model(request.model, request.version)
        return detector_pb2.LoadModelResponse(status=status_to_proto(status))

    async def UnloadModel(self, request, context):
        status = await self._service.unload_model(request.model)
        return detector_pb2.UnloadModelResponse(status=status_to_proto(status))
