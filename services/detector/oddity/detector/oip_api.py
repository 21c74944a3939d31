"""The Open Inference Protocol (KServe v2) gRPC front end of the detector: the
`inference.GRPCInferenceService` that tritonclient, KServe's SDK and inference gateways call,
served beside oddity.v1.Detector on the same port. Protobuf in, the same domain calls as
Detect (DetectorService.detect: its limits, batching, metrics and errors), protobuf out.

Inputs: one FP32 (or FP64) tensor `input` [rows, features], or one [rows] tensor per feature
named as the model's features; the routing value (the manifest's routing key, e.g. `age`) is
one more input, numeric or BYTES holding decimal text. Outputs: `score`, `normalized_score`
(FP64), `is_anomaly` (BOOL) and `group` (BYTES) per row; classifiers answer `class` (BYTES),
`probabilities` (FP32 [rows, classes]) and `group`. Raw contents are answered raw, typed
contents typed. `model_version` is the serving version's number; empty means the serving one.

A large ModelInferRequest is read as Detect's is (wire.py): its raw_input_contents stay views
into the request bytes, since protobuf would copy a 4096 x 769 tensor twice on the event loop.

Reason to change: the Open Inference Protocol API (protos/oddity/oip/grpc_predict_v2.proto).
"""

from __future__ import annotations

import importlib.metadata
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import grpc
import numpy as np

from oddity.common.errors import InvalidArgument, NotFound, OddityError, shown
from oddity.common.server import HandlerRegistry
from oddity.detector.service import DetectInput, DetectorService, DetectOutput
from oddity.detector.wire import WALK_FROM_BYTES, field_number, message_fields
from oddity.oip import grpc_predict_v2_pb2 as oip
from oddity.v1 import manifest_pb2

SERVICE = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# The RPCs served: health, metadata and inference (not the repository extension).
SERVED_METHODS = ("ServerLive", "ServerReady", "ServerMetadata", "ModelReady", "ModelMetadata", "ModelInfer")
SERVER_NAME = "oddity-detector"
MATRIX_INPUT = "input"  # the [rows, features] form of the inputs
PLATFORM = "oddity"

InferInput = oip.ModelInferRequest.InferInputTensor
InferOutput = oip.ModelInferResponse.InferOutputTensor
TensorMetadata = oip.ModelMetadataResponse.TensorMetadata

# Datatypes read and written as numbers: their little-endian numpy type and typed-contents field.
_NUMERIC: dict[str, tuple[np.dtype, str]] = {
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
}
# Datatypes answered as numbers: their little-endian numpy type.
_ANSWERED: dict[str, np.dtype] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BOOL": np.dtype("?")}
_FEATURE_TYPES = ("FP32", "FP64")
_ROUTING_TYPES = (*_NUMERIC, "BYTES")
_BYTES_LENGTH = struct.Struct("<I")  # a BYTES element's raw length prefix
_RAW_INPUT_FIELD = field_number(oip.ModelInferRequest, "raw_input_contents")
_LENGTH_DELIMITED = 2  # the wire type of bytes fields


@dataclass(slots=True)
class DecodedInfer:
    """A ModelInferRequest whose raw_input_contents may live outside the message."""

    message: oip.ModelInferRequest
    raw_inputs: Sequence[bytes | memoryview]  # raw_input_contents (views into the request bytes when walked)


def decode_infer_request(data: bytes) -> DecodedInfer:
    """Parse a request; from WALK_FROM_BYTES on, raw_input_contents are kept as views into
    `data` and protobuf parses the rest."""
    if len(data) < WALK_FROM_BYTES:
        message = oip.ModelInferRequest.FromString(data)
        return DecodedInfer(message, message.raw_input_contents)
    view = memoryview(data)
    kept: list[memoryview] = []
    raw_inputs: list[memoryview] = []
    for number, wire_type, start, value_start, end in message_fields(view, 0, len(view)):
        if number == _RAW_INPUT_FIELD and wire_type == _LENGTH_DELIMITED:
            raw_inputs.append(view[value_start:end])
        else:
            kept.append(view[start:end])
    return DecodedInfer(oip.ModelInferRequest.FromString(b"".join(kept)), raw_inputs)


def model_version(text: str) -> int:
    """OIP's version string as the detector's version number (0: the serving version)."""
    if not text:
        return 0
    if not text.isdigit() or int(text) <= 0:
        raise InvalidArgument(
            f"model_version {shown(text)!r} is not a version number (1, 2, ...; empty: the serving one)"
        )
    return int(text)


@dataclass(frozen=True, slots=True)
class _Tensor:
    """One input as sent: its name, datatype, shape and elements (a flat array or, for BYTES, a list)."""

    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray | list[bytes]


def _read_input(tensor: InferInput, raw: bytes | memoryview | None) -> _Tensor:
    name, datatype = tensor.name, tensor.datatype
    shape = [int(d) for d in tensor.shape]
    label = f"input {shown(name)!r}"
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{label} has shape {shape}; dimensions cannot be negative")
    count = math.prod(shape)
    if datatype == "BYTES":
        strings = _split_bytes(bytes(raw), label) if raw is not None else list(tensor.contents.bytes_contents)
        if len(strings) != count:
            raise InvalidArgument(f"{label} holds {len(strings)} BYTES elements; shape {shape} needs {count}")
        return _Tensor(name, datatype, shape, strings)
    if datatype not in _NUMERIC:
        raise InvalidArgument(f"{label} has datatype {shown(datatype)!r}; expected one of {[*_NUMERIC, 'BYTES']}")
    dtype, field = _NUMERIC[datatype]
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(
                f"{label}: raw content has {len(raw)} bytes; shape {shape} of {datatype} needs {count * dtype.itemsize}"
            )
        return _Tensor(name, datatype, shape, np.frombuffer(raw, dtype=dtype))
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidArgument(f"{label} holds {len(values)} {datatype} values; shape {shape} needs {count}")
    return _Tensor(name, datatype, shape, np.asarray(values, dtype=dtype))


def _split_bytes(raw: bytes, label: str) -> list[bytes]:
    """A raw BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    strings, i, end = [], 0, len(raw)
    while i < end:
        if i + 4 > end:
            raise InvalidArgument(f"{label}: raw BYTES content ends inside an element's length")
        (length,) = _BYTES_LENGTH.unpack_from(raw, i)
        i += 4
        if i + length > end:
            raise InvalidArgument(f"{label}: raw BYTES content ends inside an element")
        strings.append(raw[i : i + length])
        i += length
    return strings


def _check_type(tensor: _Tensor, allowed: Sequence[str]) -> None:
    if tensor.datatype not in allowed:
        raise InvalidArgument(
            f"input {shown(tensor.name)!r} has datatype {shown(tensor.datatype)!r}; expected {' or '.join(allowed)}"
        )


def _column(tensor: _Tensor, what: str) -> np.ndarray:
    """A per-row input ([rows] or [rows, 1]) as a flat array."""
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise InvalidArgument(f"input {shown(tensor.name)!r} has shape {shape}; expected [rows] or [rows, 1] ({what})")
    assert isinstance(tensor.values, np.ndarray)
    return tensor.values


def _routing_values(tensor: _Tensor) -> np.ndarray:
    if isinstance(tensor.values, list):  # BYTES: decimal text
        try:
            numbers = np.array([float(s.decode()) for s in tensor.values], dtype=np.float64)
        except (UnicodeDecodeError, ValueError):
            raise InvalidArgument(f"input {shown(tensor.name)!r} holds BYTES that are not decimal numbers") from None
        tensor = _Tensor(tensor.name, tensor.datatype, tensor.shape, numbers)
    return _column(tensor, "the routing value of each row, or one for all").astype(np.float64, copy=False)


def _rows_and_routing(
    manifest: manifest_pb2.ModelManifest, features: frozenset[str], tensors: list[_Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """The [rows, features] float32 matrix (in the manifest's feature order) and the routing
    values; `features`: the manifest's feature names."""
    dimension = int(manifest.input_dimension)
    routing_key = manifest.routing_key
    matrix: np.ndarray | None = None
    columns: dict[str, np.ndarray] = {}
    routing = np.empty(0, dtype=np.float64)
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise InvalidArgument(f"input {shown(tensor.name)!r} is sent twice")
        seen.add(tensor.name)
        if routing_key and tensor.name == routing_key:
            _check_type(tensor, _ROUTING_TYPES)
            routing = _routing_values(tensor)
        elif tensor.name in features:
            _check_type(tensor, _FEATURE_TYPES)
            columns[tensor.name] = _column(tensor, "one value per row")
        elif tensor.name == MATRIX_INPUT:
            _check_type(tensor, _FEATURE_TYPES)
            if len(tensor.shape) != 2 or tensor.shape[1] != dimension:
                raise InvalidArgument(
                    f"input {MATRIX_INPUT!r} has shape {tensor.shape}; expected [rows, {dimension}] ([-1, {dimension}])"
                )
            assert isinstance(tensor.values, np.ndarray)
            matrix = tensor.values.reshape(tensor.shape)
        else:
            raise InvalidArgument(f"unknown input {shown(tensor.name)!r}; {_expected_inputs(manifest)}")
    if matrix is not None and columns:
        raise InvalidArgument(f"send input {MATRIX_INPUT!r} or one input per feature, not both")
    if matrix is None:
        if not columns:
            raise InvalidArgument(f"no feature inputs; {_expected_inputs(manifest)}")
        order = list(manifest.feature_names)
        missing = [f for f in order if f not in columns]
        if missing:
            raise InvalidArgument(f"missing inputs {shown(str(missing))}; {_expected_inputs(manifest)}")
        rows = {len(c) for c in columns.values()}
        if len(rows) > 1:
            raise InvalidArgument(f"the feature inputs differ in rows ({sorted(rows)}); send one value per row in each")
        matrix = np.column_stack([columns[f] for f in order])
    if matrix.shape[0] == 0:
        raise InvalidArgument("the feature inputs have no rows")
    return np.ascontiguousarray(matrix, dtype=np.float32), routing


def _expected_inputs(manifest: manifest_pb2.ModelManifest) -> str:
    d = int(manifest.input_dimension)
    text = f"model {manifest.name!r} takes {MATRIX_INPUT!r} [-1, {d}]"
    if manifest.feature_names:
        names = list(manifest.feature_names)
        text += f" or one [-1] input per feature {shown(str(names)) if d <= 16 else f'({d} names)'}"
    if manifest.routing_key:
        text += f", and {manifest.routing_key!r} [-1] (the routing value)"
    return text


def _is_classifier(manifest: manifest_pb2.ModelManifest) -> bool:
    return manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION


def input_metadata(manifest: manifest_pb2.ModelManifest) -> list[TensorMetadata]:
    inputs = [TensorMetadata(name=MATRIX_INPUT, datatype="FP32", shape=[-1, int(manifest.input_dimension)])]
    if manifest.routing_key:
        inputs.append(TensorMetadata(name=manifest.routing_key, datatype="FP64", shape=[-1]))
    return inputs


def output_metadata(manifest: manifest_pb2.ModelManifest) -> list[TensorMetadata]:
    if _is_classifier(manifest):
        return [
            TensorMetadata(name="class", datatype="BYTES", shape=[-1]),
            TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(manifest.class_labels)]),
            TensorMetadata(name="group", datatype="BYTES", shape=[-1]),
        ]
    return [
        TensorMetadata(name="score", datatype="FP64", shape=[-1]),
        TensorMetadata(name="normalized_score", datatype="FP64", shape=[-1]),
        TensorMetadata(name="is_anomaly", datatype="BOOL", shape=[-1]),
        TensorMetadata(name="group", datatype="BYTES", shape=[-1]),
    ]


@dataclass(frozen=True, slots=True)
class _Output:
    name: str
    datatype: str
    shape: list[int]
    values: np.ndarray  # numbers; for BYTES, each row's index into `table`
    table: Sequence[bytes] = ()  # BYTES: the distinct strings (group names, class labels)


def _outputs(output: DetectOutput) -> list[_Output]:
    s = output.scores
    rows = len(s.row_groups)
    groups = _Output("group", "BYTES", [rows], s.row_groups, [name.encode() for name in s.group_names])
    if s.classes is not None and s.probabilities is not None:
        probabilities = np.ascontiguousarray(s.probabilities, dtype=np.float32)
        return [
            _Output("class", "BYTES", [rows], s.classes, [label.encode() for label in output.class_labels]),
            _Output("probabilities", "FP32", list(probabilities.shape), probabilities),
            groups,
        ]
    return [
        _Output("score", "FP64", [rows], s.scores),
        _Output("normalized_score", "FP64", [rows], s.normalized),
        _Output("is_anomaly", "BOOL", [rows], s.is_anomaly),
        groups,
    ]


def _asked_for(outputs: list[_Output], request: oip.ModelInferRequest) -> list[_Output]:
    if not request.outputs:
        return outputs
    by_name = {o.name: o for o in outputs}
    chosen = []
    for asked in request.outputs:
        if asked.name not in by_name:
            raise InvalidArgument(f"unknown output {shown(asked.name)!r}; the model answers {list(by_name)}")
        chosen.append(by_name[asked.name])
    return chosen


def _write(response: oip.ModelInferResponse, outputs: list[_Output], raw: bool) -> None:
    for out in outputs:
        tensor = response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        if out.datatype == "BYTES":
            if raw:
                response.raw_output_contents.append(_pack_rows(out.table, out.values))
            else:
                tensor.contents.bytes_contents.extend([out.table[i] for i in out.values.tolist()])
        elif raw:
            response.raw_output_contents.append(out.values.astype(_ANSWERED[out.datatype], copy=False).tobytes())
        elif out.datatype == "BOOL":
            tensor.contents.bool_contents.extend(out.values.ravel().tolist())
        else:
            getattr(tensor.contents, _NUMERIC[out.datatype][1]).extend(out.values.ravel().tolist())


def _pack_rows(table: Sequence[bytes], index: np.ndarray) -> bytes:
    """A raw BYTES tensor of table[i] for each row's i, each string encoded once."""
    entries = [_BYTES_LENGTH.pack(len(s)) + s for s in table]
    if len(entries) == 1:
        return entries[0] * len(index)
    return b"".join([entries[i] for i in index.tolist()])


class InferenceServicer:
    """The six Open Inference Protocol RPCs (health, metadata, inference), over DetectorService."""

    def __init__(self, service: DetectorService) -> None:
        self._service = service
        self._server_version = importlib.metadata.version("oddity-detector")
        self._feature_sets: dict[str, tuple[manifest_pb2.ModelManifest, frozenset[str]]] = {}

    def _manifest(self, name: str, version: int) -> manifest_pb2.ModelManifest:
        """The serving version's manifest (the registry's errors for a model that does not serve)."""
        with self._service.registry.lease(name) as model:
            if version and version != model.version:
                raise NotFound(f"version {version} of model {model.name!r} is not serving (serving {model.version})")
            return model.manifest

    def _feature_set(self, manifest: manifest_pb2.ModelManifest) -> frozenset[str]:
        """The manifest's feature names as a set, made once per loaded manifest: listing 769
        names on each call cost a one-row ModelInfer ~40 us."""
        cached = self._feature_sets.get(manifest.name)
        if cached is None or cached[0] is not manifest:  # the manifest held keeps its identity unique
            cached = (manifest, frozenset(manifest.feature_names))
            self._feature_sets[manifest.name] = cached
        return cached[1]

    async def ServerLive(self, request, context) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=self._service.registry.has_models)

    async def ServerMetadata(self, request, context) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name=SERVER_NAME, version=self._server_version)

    async def ModelReady(self, request: oip.ModelReadyRequest, context) -> oip.ModelReadyResponse:
        version = model_version(request.version)
        try:
            self._manifest(request.name, version)
        except OddityError:  # unknown, unloaded, still loading or another version: not ready
            return oip.ModelReadyResponse(ready=False)
        return oip.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: oip.ModelMetadataRequest, context) -> oip.ModelMetadataResponse:
        manifest = self._manifest(request.name, model_version(request.version))
        return oip.ModelMetadataResponse(
            name=manifest.name,
            versions=[str(manifest.version)],
            platform=PLATFORM,
            inputs=input_metadata(manifest),
            outputs=output_metadata(manifest),
        )

    async def ModelInfer(self, decoded: DecodedInfer, context) -> oip.ModelInferResponse:
        request, raw_contents = decoded.message, decoded.raw_inputs
        version = model_version(request.model_version)
        raw = len(raw_contents) > 0
        if raw and len(raw_contents) != len(request.inputs):
            raise InvalidArgument(
                f"raw_input_contents has {len(raw_contents)} entries for {len(request.inputs)} inputs; one per input"
            )
        tensors = [_read_input(tensor, raw_contents[i] if raw else None) for i, tensor in enumerate(request.inputs)]
        manifest = self._manifest(request.model_name, version)
        rows, routing = _rows_and_routing(manifest, self._feature_set(manifest), tensors)
        output = await self._service.detect(
            DetectInput(
                model=request.model_name,
                rows=rows,
                version=version,
                routing_values=cast(Sequence[float], routing),  # the scorer reads arrays as they are
            )
        )
        response = oip.ModelInferResponse(model_name=output.model, model_version=str(output.version), id=request.id)
        _write(response, _asked_for(_outputs(output), request), raw)
        return response


def add_to_server(servicer: InferenceServicer, server: HandlerRegistry) -> None:
    """Register the six RPCs of inference.GRPCInferenceService (its repository extension,
    RepositoryModelLoad/Unload, stays UNIMPLEMENTED: oddity.v1's LoadModel/UnloadModel do that).
    ModelInfer reads its request with `decode_infer_request`."""
    handlers = {}
    for name in SERVED_METHODS:
        method = SERVICE.methods_by_name[name]
        request_type = getattr(oip, method.input_type.name)
        response_type = getattr(oip, method.output_type.name)
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_type.FromString, response_type.SerializeToString
        )
    handlers["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
        servicer.ModelInfer, decode_infer_request, oip.ModelInferResponse.SerializeToString
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
