"""Synchronous client of the detector: score rows, images and texts; find similar items, list
clusters and suggest tags; list, inspect, load and unload models.

    with DetectorClient("127.0.0.1:50052") as detector:
        result = detector.detect("sensors", frame, explain_top_k=3)
        flagged = frame[result.is_anomaly]
        alike = detector.similar("library", item_id="img-17", top_k=5, filters={"age": (3, 6)})

A DataFrame's columns name the features (extra columns are left out), and when the model is
trained per group its routing column (e.g. `age`) gives each row's routing value. The model's
manifest says which columns those are; it is fetched once per model and fetched again after
the detector answers with another version.

Reason to change: the Detector API, as SDK callers see it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from google.protobuf import json_format

from oddity.client.connection import ServiceClient
from oddity.client.detection import DetectResult
from oddity.client.features import FeatureLayout
from oddity.client.item_queries import Filters, ImageLike, Query, VectorLike, filter_list
from oddity.client.item_results import ClustersResult, SimilarResult, TagSuggestions
from oddity.client.messages import from_message
from oddity.common.errors import FailedPrecondition
from oddity.common.tensors import array_to_tensor
from oddity.v1 import detector_pb2, detector_pb2_grpc, manifest_pb2

RoutingValues = float | Sequence[float] | None


# Every per-row column except the group name per row: DetectResult reads groups from the
# answer's group table, which keeps large answers small.
COMPACT_COLUMNS = [
    column
    for column in detector_pb2.DetectColumn.values()
    if column not in (detector_pb2.DETECT_COLUMN_UNSPECIFIED, detector_pb2.DETECT_COLUMN_GROUPS)
]


@dataclass(frozen=True)
class ModelStatus:
    """What a detector says of one model."""

    name: str
    serving_version: int  # 0: nothing serves
    available_versions: tuple[int, ...]
    pinned_version: int  # 0: not pinned
    unloaded: bool
    kind: str
    last_error: str
    rejected_versions: dict[int, str]  # version folder -> why the detector refuses it

    @classmethod
    def from_proto(cls, status: detector_pb2.ModelStatus) -> ModelStatus:
        return from_message(cls, status)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"available_versions": list(self.available_versions)}


@dataclass(frozen=True)
class ModelDetails:
    """One model: its status and the manifest of its serving version (the bundle contract)."""

    status: ModelStatus
    manifest: manifest_pb2.ModelManifest

    @classmethod
    def from_proto(cls, response: detector_pb2.GetModelResponse) -> ModelDetails:
        return from_message(cls, response, status=ModelStatus.from_proto(response.status), manifest=response.manifest)

    def to_dict(self) -> dict[str, Any]:
        manifest = json_format.MessageToDict(self.manifest, preserving_proto_field_name=True)
        return {"status": self.status.to_dict(), "manifest": manifest}


def _routing(values: RoutingValues) -> list[float]:
    if values is None:
        return []
    if isinstance(values, int | float | np.number):
        return [float(values)]
    return [float(v) for v in values]


class DetectorClient(ServiceClient):
    service = detector_pb2.DESCRIPTOR.services_by_name["Detector"].full_name
    label = "detector"
    stub_class = detector_pb2_grpc.DetectorStub

    @cached_property
    def _layouts(self) -> dict[str, FeatureLayout]:
        return {}

    def detect(
        self,
        model: str,
        rows: pd.DataFrame | np.ndarray,
        *,
        feature_names: Sequence[str] | None = None,
        routing_values: RoutingValues = None,
        threshold_percentile: float | None = None,
        explain_top_k: int = 0,
        version: int = 0,
    ) -> DetectResult:
        """Score rows with the serving version of `model` (or fail unless `version` serves).

        `rows`: a DataFrame (see the module docstring), or a [rows, features] array in the
        manifest's order (`feature_names` lets the detector check or reorder them).
        `routing_values`: one per row or one for all; taken from a DataFrame when omitted.
        """
        index = None
        if isinstance(rows, pd.DataFrame):
            if feature_names is not None:
                raise ValueError("a DataFrame's columns name its features: leave feature_names out")
            split = self.layout(model).split(rows)
            array, feature_names, index = split.rows, split.feature_names, rows.index
            if routing_values is None:
                routing_values = split.routing_values
        else:
            array = np.atleast_2d(np.asarray(rows, dtype=np.float32))
        request = detector_pb2.DetectRequest(
            model=model,
            version=version,
            rows=array_to_tensor(array),
            feature_names=list(feature_names or ()),
            routing_values=_routing(routing_values),
            explain_top_k=explain_top_k,
            columns=COMPACT_COLUMNS,
        )
        if threshold_percentile is not None:
            request.threshold_percentile = threshold_percentile
        response = self._call("Detect", request)
        self._forget_stale_layout(model, response.model_version)
        return DetectResult(response, index=index)

    def detect_images(
        self,
        model: str,
        images: Sequence[bytes | Path | str] = (),
        *,
        texts: Sequence[str] = (),
        routing_values: RoutingValues = None,
        extra_features: np.ndarray | None = None,
        threshold_percentile: float | None = None,
    ) -> DetectResult:
        """Score images (encoded bytes, or paths to image files) or texts with a model trained
        on their embeddings. `routing_values`: one per item or one for all (e.g. the child's
        age); `extra_features`: [items, extra features] when the model appends more than the
        routing key."""
        request = detector_pb2.DetectImagesRequest(
            model=model,
            images=[item if isinstance(item, bytes) else Path(item).read_bytes() for item in images],
            texts=list(texts),
            routing_values=_routing(routing_values),
        )
        if extra_features is not None:
            request.extra_features.CopyFrom(array_to_tensor(np.atleast_2d(extra_features)))
        if threshold_percentile is not None:
            request.threshold_percentile = threshold_percentile
        response = self._call("DetectImages", request)
        return DetectResult(
            response.result,
            embedder_model_id=response.embedder_model_id,
            embedder_revision=response.embedder_revision,
        )

    def similar(
        self,
        model: str,
        *,
        item_id: str | None = None,
        vector: VectorLike | None = None,
        image: ImageLike | None = None,
        text: str | None = None,
        top_k: int = 10,
        filters: Filters = None,
        exclude_self: bool = False,
        with_tags: Sequence[str] = (),
        version: int = 0,
    ) -> SimilarResult:
        """The `top_k` indexed items most similar to one query: an indexed item's id, a vector
        (in the index's space before normalization), an image (bytes or a path) or a text.

        `filters`: a mapping of column to value, or Filter objects (see `oddity.client.item_queries`);
        `with_tags`: keep only items carrying every one of these; `exclude_self`: with `item_id`,
        leave the item itself out. Raises ValueError unless exactly one query is given.
        """
        request = detector_pb2.SimilarRequest(
            model=model,
            version=version,
            query=Query.of(item_id=item_id, vector=vector, image=image, text=text).to_proto(),
            top_k=top_k,
            filters=[f.to_proto() for f in filter_list(filters)],
            exclude_self=exclude_self,
            with_tags=list(with_tags),
        )
        return SimilarResult.from_proto(self._call("Similar", request))

    def clusters(
        self,
        model: str,
        *,
        representatives: int = 5,
        assign: Sequence[Query | bytes | Path | np.ndarray] = (),
        version: int = 0,
    ) -> ClustersResult:
        """The clusters of the indexed items, largest first, each with up to `representatives`
        central members; and, for each item of `assign` (a Query, image bytes, an image Path or a
        vector), the nearest cluster or none."""
        request = detector_pb2.ClustersRequest(
            model=model,
            version=version,
            representatives=representatives,
            assign=[Query.coerce(item).to_proto() for item in assign],
        )
        return ClustersResult.from_proto(self._call("Clusters", request))

    def suggest_tags(
        self,
        model: str,
        *,
        item_id: str | None = None,
        vector: VectorLike | None = None,
        image: ImageLike | None = None,
        text: str | None = None,
        tags: Sequence[str] = (),
        top_k: int = 5,
        neighbours: int = 10,
        version: int = 0,
    ) -> TagSuggestions:
        """Tags for one item (given as in `similar`), best first: from its `neighbours` nearest
        items' tags, weighted by similarity, and from how often tags go with the ones it has
        (`tags`, plus an indexed item's own). Tags it has are not suggested."""
        request = detector_pb2.SuggestTagsRequest(
            model=model,
            version=version,
            query=Query.of(item_id=item_id, vector=vector, image=image, text=text).to_proto(),
            tags=list(tags),
            top_k=top_k,
            neighbours=neighbours,
        )
        return TagSuggestions.from_proto(self._call("SuggestTags", request))

    def models(self) -> list[ModelStatus]:
        response = self._call("ListModels", detector_pb2.ListModelsRequest())
        return [ModelStatus.from_proto(m) for m in response.models]

    def model(self, name: str) -> ModelDetails:
        return ModelDetails.from_proto(self._call("GetModel", detector_pb2.GetModelRequest(model=name)))

    def layout(self, name: str) -> FeatureLayout:
        """Which columns `name` reads (from its serving manifest; kept until another version answers)."""
        if name not in self._layouts:
            manifest = self.model(name).manifest
            if not manifest.name:
                raise FailedPrecondition(f"model {name!r} has no serving version on the detector at {self.target}")
            self._layouts[name] = FeatureLayout.of(manifest)
        return self._layouts[name]

    def _forget_stale_layout(self, model: str, served_version: int) -> None:
        layout = self._layouts.get(model)
        if layout is not None and layout.version != served_version:
            self._layouts.pop(model, None)  # (threads may race here: no KeyError)

    def load_model(self, name: str, version: int = 0) -> ModelStatus:
        """Rescan now and serve the newest complete version, or pin `version`."""
        response = self._call("LoadModel", detector_pb2.LoadModelRequest(model=name, version=version))
        return ModelStatus.from_proto(response.status)

    def unload_model(self, name: str) -> ModelStatus:
        response = self._call("UnloadModel", detector_pb2.UnloadModelRequest(model=name))
        return ModelStatus.from_proto(response.status)
