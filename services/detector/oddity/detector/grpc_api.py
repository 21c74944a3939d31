"""gRPC front end of the detector: protobuf in, domain call, protobuf out. Nothing else.

Reason to change: the Detector protobuf API (protos/oddity/v1/detector.proto).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from oddity.common.errors import NotFound
from oddity.common.logging import annotate_request
from oddity.common.server import HandlerRegistry
from oddity.common.tensors import array_to_tensor, tensor_to_array
from oddity.detector import wire
from oddity.detector.item_attributes import MetadataFilter
from oddity.detector.item_index import SimilarItem
from oddity.detector.registry import ModelStatus
from oddity.detector.service import DetectImagesInput, DetectInput, DetectorService, DetectOutput
from oddity.detector.similarity_service import (
    ClustersInput,
    ItemQuery,
    SimilarInput,
    SimilarityService,
    SuggestTagsInput,
)
from oddity.detector.wire import DecodedDetect, decode_detect_request
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


def detect_input(request: DecodedDetect) -> DetectInput:
    message = request.message
    rows = wire.raw_rows(message.rows, request.rows_raw)
    return DetectInput(
        model=message.model,
        version=message.version,
        rows=tensor_to_array(message.rows, raw_data=request.rows_raw) if rows is None else rows,
        feature_names=message.feature_names,
        routing_values=message.routing_values,
        threshold_percentile=message.threshold_percentile if message.HasField("threshold_percentile") else None,
        explain_top_k=message.explain_top_k,
    )


Column = detector_pb2.DetectColumn
ALL_COLUMNS = frozenset(Column.values()) - {Column.DETECT_COLUMN_UNSPECIFIED}


def detect_response(output: DetectOutput, columns: Sequence[int] = ()) -> bytes:
    """A serialized DetectResponse with the per-row `columns` asked for (all when empty).

    The fields that are the same for every answer of a version (model, version, kind, group
    names, and each group's encoded entry of `groups`) are serialized once per version, and
    what the columns asked for write is planned once per column list: a one-row answer costs
    a few concatenations, not a protobuf message built and serialized per call."""
    s = output.scores
    plan = _column_plan(tuple(columns))
    head, group_entries = _version_head(output.model, output.version, output.kind, s.group_names)
    parts = [head]
    if s.classes is not None and s.probabilities is not None:
        classified = detector_pb2.DetectResponse(class_labels=output.class_labels)
        classified.probabilities.CopyFrom(array_to_tensor(s.probabilities))
        parts.append(classified.SerializeToString())
        parts.append(wire.repeated_strings(_PREDICTED_CLASSES, output.class_labels, s.classes))
        if s.predicted_scores is not None:
            parts.append(wire.packed_doubles(_PREDICTED_SCORES, s.predicted_scores))
    row_groups = s.row_groups
    rows = len(row_groups)
    if s.classes is None and rows <= _STRUCT_ROWS:  # every column has a value per row
        packer, prefixes = wire.fixed_columns(plan.fixed, rows)
        values: list[object] = []
        for prefix, (attribute, _) in zip(prefixes, plan.columns, strict=True):
            values.append(prefix)
            values.extend(getattr(s, attribute).tolist())
        parts.append(packer.pack(*values))
    else:
        for attribute, tag in plan.columns:
            parts.append(wire.packed_column(tag, getattr(s, attribute), _DTYPES[attribute]))
    if plan.groups:
        parts.append(wire.gather(group_entries, row_groups))
    if len(group_entries) > 1:
        parts.append(wire.packed_uints(_ROW_GROUPS, row_groups))
    if s.explanations is not None:
        indices, errors, shares = s.explanations
        parts.append(wire.explanations(_EXPLANATIONS, output.feature_names, indices, errors, shares))
    return b"".join(parts)


def _field(name: str) -> int:
    return detector_pb2.DetectResponse.DESCRIPTOR.fields_by_name[name].number


# (column, the Scores attribute holding it, its DetectResponse field); classifiers leave the
# anomaly columns empty, and empty columns are not written.
_DOUBLE_COLUMNS = [
    (Column.DETECT_COLUMN_SCORES, "scores", _field("scores")),
    (Column.DETECT_COLUMN_NORMALIZED_SCORES, "normalized", _field("normalized_scores")),
    (Column.DETECT_COLUMN_THRESHOLDS, "thresholds", _field("thresholds")),
    (Column.DETECT_COLUMN_CONFIDENCES, "confidences", _field("confidences")),
]
_PREDICTED_CLASSES, _PREDICTED_SCORES = _field("predicted_classes"), _field("predicted_scores")
_GROUPS, _ROW_GROUPS, _EXPLANATIONS = _field("groups"), _field("row_groups"), _field("explanations")
_BOOL_COLUMNS = [
    (Column.DETECT_COLUMN_IS_ANOMALY, "is_anomaly", _field("is_anomaly")),
    (Column.DETECT_COLUMN_FALLBACK, "fallback", _field("fallback")),
]


# Per Scores attribute written as a packed column: its type on the wire, as numpy and struct name it.
_DTYPES = {attribute: np.dtype("<f8") for _, attribute, _ in _DOUBLE_COLUMNS} | {
    attribute: np.dtype(np.uint8) for _, attribute, _ in _BOOL_COLUMNS
}
_STRUCT_CODES = {attribute: "d" for _, attribute, _ in _DOUBLE_COLUMNS} | {a: "?" for _, a, _ in _BOOL_COLUMNS}
# Answers up to this many rows write their packed columns with one struct call (see wire.fixed_columns).
_STRUCT_ROWS = 64


@dataclass(frozen=True, slots=True)
class _ColumnPlan:
    """What an answer writes for one list of columns asked for."""

    columns: tuple[tuple[str, bytes], ...]  # (Scores attribute, field tag) of each packed column
    fixed: tuple[tuple[bytes, str], ...]  # (field tag, struct code) of each, for wire.fixed_columns
    groups: bool


@functools.lru_cache(maxsize=256)
def _column_plan(columns: tuple[int, ...]) -> _ColumnPlan:
    wanted = ALL_COLUMNS.intersection(columns) if columns else ALL_COLUMNS
    packed = tuple((a, wire.length_tag(n)) for c, a, n in _DOUBLE_COLUMNS + _BOOL_COLUMNS if c in wanted)
    return _ColumnPlan(
        columns=packed,
        fixed=tuple((tag, _STRUCT_CODES[a]) for a, tag in packed),
        groups=Column.DETECT_COLUMN_GROUPS in wanted,
    )


def _version_head(model: str, version: int, kind: str, group_names: list[str]) -> tuple[bytes, list[bytes]]:
    """The serialized fields every answer of a version begins with, and each group's encoded
    entry of the per-row `groups` field (made once per version and group list)."""
    key = (model, version, kind, tuple(group_names))
    found = _HEADS.get(key)
    if found is None:
        if len(_HEADS) >= _MAX_HEADS:
            _HEADS.clear()  # versions come and go; the serving ones are made again at once
        head = detector_pb2.DetectResponse(model=model, model_version=version, kind=kind, group_names=group_names)
        entries = [wire.length_delimited(_GROUPS, name.encode()) for name in group_names]
        found = _HEADS[key] = (head.SerializeToString(), entries)
    return found


_HEADS: dict[tuple[str, int, str, tuple[str, ...]], tuple[bytes, list[bytes]]] = {}
_MAX_HEADS = 1024


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


def item_query(query: detector_pb2.ItemQuery, field: str = "query") -> ItemQuery:
    kind = query.WhichOneof("query")
    if kind == "item_id":
        return ItemQuery(item_id=query.item_id)
    if kind == "vector":
        return ItemQuery(vector=tensor_to_array(query.vector, field=f"{field}.vector"))
    if kind == "image":
        return ItemQuery(image=query.image)
    if kind == "text":
        return ItemQuery(text=query.text)
    return ItemQuery()


def metadata_filter(spec: detector_pb2.MetadataFilter) -> MetadataFilter:
    return MetadataFilter(
        column=spec.column,
        any_of=tuple(spec.any_of),
        min=spec.min if spec.HasField("min") else None,
        max=spec.max if spec.HasField("max") else None,
    )


def similar_input(request: detector_pb2.SimilarRequest) -> SimilarInput:
    return SimilarInput(
        model=request.model,
        version=request.version,
        query=item_query(request.query),
        top_k=request.top_k,
        filters=[metadata_filter(f) for f in request.filters],
        exclude_self=request.exclude_self,
        with_tags=list(request.with_tags),
    )


def similar_item(item: SimilarItem) -> detector_pb2.SimilarItem:
    return detector_pb2.SimilarItem(
        id=item.id,
        similarity=item.similarity,
        metadata=item.metadata,
        tags=item.tags,
        cluster=item.cluster,
        text=item.text,
    )


class DetectorServicer(detector_pb2_grpc.DetectorServicer):
    def __init__(self, service: DetectorService, similarity: SimilarityService) -> None:
        self._service = service
        self._similarity = similarity

    async def Detect(self, request: DecodedDetect, context) -> bytes:
        output = await self._service.detect(detect_input(request))
        return detect_response(output, request.message.columns)

    async def DetectImages(self, request, context) -> bytes:
        output, model_id, revision = await self._service.detect_images(detect_images_input(request))
        head = detector_pb2.DetectImagesResponse(embedder_model_id=model_id, embedder_revision=revision)
        return head.SerializeToString() + wire.length_delimited(_RESULT_FIELD, detect_response(output))

    async def Similar(self, request, context):
        output = await self._similarity.similar(similar_input(request))
        return detector_pb2.SimilarResponse(
            model=output.model,
            version=output.version,
            items=[similar_item(i) for i in output.items],
            approximate=output.approximate,
            matched_tags=[detector_pb2.TagMatch(tag=m.tag, similarity=m.similarity) for m in output.matched_tags],
        )

    async def Clusters(self, request, context):
        output = await self._similarity.clusters(
            ClustersInput(
                model=request.model,
                version=request.version,
                representatives=request.representatives,
                assign=[item_query(q, f"assign[{i}]") for i, q in enumerate(request.assign)],
            )
        )
        return detector_pb2.ClustersResponse(
            model=output.model,
            version=output.version,
            clusters=[
                detector_pb2.ClusterInfo(
                    id=c.id,
                    size=c.size,
                    representatives=[similar_item(i) for i in c.representatives],
                    top_tags=c.top_tags,
                )
                for c in output.clusters
            ],
            unclustered=output.unclustered,
            assignments=[
                detector_pb2.ClusterAssignment(cluster=a.cluster, is_new=a.is_new, similarity=a.similarity)
                for a in output.assignments
            ],
        )

    async def SuggestTags(self, request, context):
        output = await self._similarity.suggest_tags(
            SuggestTagsInput(
                model=request.model,
                version=request.version,
                query=item_query(request.query),
                tags=list(request.tags),
                top_k=request.top_k,
                neighbours=request.neighbours,
            )
        )
        return detector_pb2.SuggestTagsResponse(
            model=output.model,
            version=output.version,
            suggestions=[
                detector_pb2.TagSuggestion(
                    tag=s.tag, score=s.score, from_neighbours=s.from_neighbours, from_cooccurrence=s.from_cooccurrence
                )
                for s in output.suggestions
            ],
        )

    async def ListModels(self, request, context):
        return detector_pb2.ListModelsResponse(models=[status_to_proto(s) for s in self._service.list_models()])

    async def GetModel(self, request, context):
        status = self._service.get_model(request.model)
        return detector_pb2.GetModelResponse(status=status_to_proto(status), manifest=status.manifest)

    # The admin RPCs name what they change in the call's audit line: the version asked for
    # (0: the newest) until the one loaded is known, and the version an unload stops serving.
    # (Log lines cut long names: oddity.common.logging.)
    async def LoadModel(self, request, context):
        annotate_request(model=request.model, version=request.version)
        status = await self._service.load_model(request.model, request.version)
        annotate_request(version=status.serving_version)
        return detector_pb2.LoadModelResponse(status=status_to_proto(status))

    async def UnloadModel(self, request, context):
        annotate_request(model=request.model, version=self._serving_version(request.model))
        status = await self._service.unload_model(request.model)
        return detector_pb2.UnloadModelResponse(status=status_to_proto(status))

    def _serving_version(self, model: str) -> int:
        try:
            return self._service.get_model(model).serving_version
        except NotFound:
            return 0


_RESULT_FIELD = detector_pb2.DetectImagesResponse.DESCRIPTOR.fields_by_name["result"].number


def add_to_server(servicer: DetectorServicer, server: HandlerRegistry) -> None:
    """Register the Detector service. Detect reads its request with `decode_detect_request`,
    and Detect and DetectImages return bytes written by `detect_response` (see wire.py);
    every other RPC uses its protobuf messages' own (de)serializers."""
    service = detector_pb2.DESCRIPTOR.services_by_name["Detector"]
    handlers = {}
    for method in service.methods:
        request_type = getattr(detector_pb2, method.input_type.name)
        response_type = getattr(detector_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_type.FromString, response_type.SerializeToString
        )
    handlers["Detect"] = grpc.unary_unary_rpc_method_handler(servicer.Detect, decode_detect_request)
    handlers["DetectImages"] = grpc.unary_unary_rpc_method_handler(
        servicer.DetectImages, detector_pb2.DetectImagesRequest.FromString
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
