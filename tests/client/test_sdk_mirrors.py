"""Every SDK dataclass that mirrors a protobuf message has a field for each of the message's
fields, bar the ones written down here with the reason; a field added to a message and not to
its dataclass fails here instead of being dropped on the way to the caller. And what a
message carries reaches the dataclass: a message with every field set (nested ones too) is
read by the SDK and each field compared with what was sent.

Not mirrors: DetectResult keeps the whole DetectResponse (it reads its columns from it), and
FeatureLayout takes from a manifest only the columns a table must have."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from oddity.client import (
    ClusterAssignment,
    ClusterInfo,
    ClustersResult,
    Contribution,
    DatasetStatus,
    DetectResult,
    Filter,
    GroupEvidence,
    HistoryEvent,
    Job,
    ModelDetails,
    ModelStatus,
    Query,
    Rollback,
    SimilarItem,
    SimilarResult,
    TagMatch,
    TagSuggestion,
    TagSuggestions,
    ThresholdChange,
)
from oddity.v1 import detector_pb2, trainer_pb2

STRUCT = struct_pb2.Struct.DESCRIPTOR.full_name
TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name


@dataclass(frozen=True)
class Mirror:
    sdk: type
    message: type[Message]
    #: message field (a.b for a field of a nested message the dataclass flattens) -> its dataclass field
    renamed: dict[str, str] = field(default_factory=dict)
    #: message field -> why the dataclass has no counterpart
    left_out: dict[str, str] = field(default_factory=dict)
    #: dataclass field -> where it comes from, when not from the message
    sdk_only: dict[str, str] = field(default_factory=dict)
    #: the SDK reads this message with sdk.from_proto (else it only writes it, with to_proto)
    reads: bool = True

    def __str__(self) -> str:
        return f"{self.sdk.__name__}<-{self.message.DESCRIPTOR.name}"


AUTO_TRAINING = ("policy", "interval_hours", "debounce_seconds", "min_samples")
MIRRORS = [
    Mirror(Job, trainer_pb2.Job),
    Mirror(
        DatasetStatus,
        trainer_pb2.DatasetStatus,
        renamed={
            **{f"auto_training.{name}": name for name in AUTO_TRAINING},
            "auto_training.enabled": "auto_training",  # a flag, named for what it turns on
        },
    ),
    Mirror(GroupEvidence, trainer_pb2.GroupEvidence),
    Mirror(
        HistoryEvent,
        trainer_pb2.HistoryEvent,
        renamed={"details_json": "details"},
        left_out={"details": "a Struct holds every number as a double; details_json has the same, exactly typed"},
    ),
    Mirror(Rollback, trainer_pb2.RollbackResponse),
    Mirror(ThresholdChange, trainer_pb2.SetThresholdResponse),
    Mirror(ModelStatus, detector_pb2.ModelStatus),
    Mirror(ModelDetails, detector_pb2.GetModelResponse),
    Mirror(Contribution, detector_pb2.FeatureContribution, renamed={"contribution": "share"}),
    Mirror(SimilarItem, detector_pb2.SimilarItem),
    Mirror(TagMatch, detector_pb2.TagMatch),
    Mirror(SimilarResult, detector_pb2.SimilarResponse),
    Mirror(ClusterInfo, detector_pb2.ClusterInfo),
    Mirror(ClusterAssignment, detector_pb2.ClusterAssignment),
    Mirror(ClustersResult, detector_pb2.ClustersResponse),
    Mirror(TagSuggestion, detector_pb2.TagSuggestion),
    Mirror(TagSuggestions, detector_pb2.SuggestTagsResponse),
    Mirror(
        DetectResult,
        detector_pb2.DetectImagesResponse,
        renamed={"result": "response"},
        sdk_only={"index": "the input DataFrame's index, so results join back onto the input"},
        reads=False,
    ),
    Mirror(Query, detector_pb2.ItemQuery, reads=False),
    Mirror(Filter, detector_pb2.MetadataFilter, reads=False),
]
BY_SDK = {mirror.sdk: mirror for mirror in MIRRORS}


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _flattened(mirror: Mirror, path: str) -> bool:
    return any(name.startswith(f"{path}.") for name in mirror.renamed)


def expected_fields(mirror: Mirror, descriptor: Descriptor, prefix: str = "") -> dict[str, str]:
    """Dataclass field -> the message field (path) it mirrors."""
    expected = {}
    for wire in descriptor.fields:
        path = f"{prefix}{wire.name}"
        if path in mirror.left_out:
            continue
        if wire.message_type is not None and not _is_map(wire) and _flattened(mirror, path):
            expected |= expected_fields(mirror, wire.message_type, f"{path}.")
        else:
            expected[mirror.renamed.get(path, path)] = path
    return expected


def message_paths(descriptor: Descriptor, prefix: str = "") -> set[str]:
    paths = set()
    for wire in descriptor.fields:
        paths.add(f"{prefix}{wire.name}")
        if wire.message_type is not None and not _is_map(wire) and not prefix:
            paths |= message_paths(wire.message_type, f"{wire.name}.")
    return paths


@pytest.mark.parametrize("mirror", MIRRORS, ids=str)
def test_every_message_field_has_its_dataclass_field(mirror):
    declared = {*mirror.renamed, *mirror.left_out}
    assert declared - message_paths(mirror.message.DESCRIPTOR) == set(), "declared for fields the message lacks"
    sdk_fields = {f.name for f in dataclasses.fields(mirror.sdk)}
    assert set(mirror.sdk_only) - sdk_fields == set(), "sdk_only names fields the dataclass lacks"
    expected = expected_fields(mirror, mirror.message.DESCRIPTOR)
    missing = {path for name, path in expected.items() if name not in sdk_fields}
    assert missing == set(), f"{mirror.message.DESCRIPTOR.full_name} fields with no {mirror.sdk.__name__} field"
    assert sdk_fields - set(mirror.sdk_only) - set(expected) == set(), "dataclass fields from no message field"


# A message with every field set: distinct, non-default values (nested messages filled too).


def _sample(wire: FieldDescriptor, k: int) -> Any:
    if wire.type == FieldDescriptor.TYPE_BOOL:
        return True
    if wire.type == FieldDescriptor.TYPE_STRING:
        return json.dumps({"field": wire.name, "n": k}) if wire.name.endswith("_json") else f"{wire.name}-{k}"
    if wire.type == FieldDescriptor.TYPE_BYTES:
        return f"{wire.name}-{k}".encode()
    if wire.type == FieldDescriptor.TYPE_ENUM:
        named = [v.number for v in wire.enum_type.values if v.number != 0]
        return named[k % len(named)]
    if wire.cpp_type in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return wire.number + 0.25 + k  # exact in float32 too
    return wire.number * 10 + k + 1  # integers: never 0, never the -1 of "no cluster"


def fill(message: Message, depth: int = 0) -> Message:
    descriptor = message.DESCRIPTOR
    if descriptor.full_name == TIMESTAMP:
        message.FromSeconds(1_700_000_000 + depth)
        return message
    if descriptor.full_name == STRUCT:
        message.update({"n": 3})
        return message
    for wire in descriptor.fields:
        oneof = wire.containing_oneof
        if oneof is not None and oneof.fields[0] is not wire:
            continue
        value = getattr(message, wire.name)
        if _is_map(wire):
            key_field, value_field = wire.message_type.fields_by_name["key"], wire.message_type.fields_by_name["value"]
            for k in (0, 1):
                key = _sample(key_field, k)
                if value_field.message_type is not None:
                    fill(value[key], depth + 1)
                else:
                    value[key] = _sample(value_field, k)
        elif wire.message_type is not None and wire.is_repeated:
            for _ in range(2):
                fill(value.add(), depth + 1)
        elif wire.message_type is not None:
            if depth < 4:
                fill(value, depth + 1)
        elif wire.is_repeated:
            value.extend([_sample(wire, 0), _sample(wire, 1)])
        else:
            setattr(message, wire.name, _sample(wire, 0))
    return message


def _enum_name(wire: FieldDescriptor, number: int) -> str:
    """The SDK's name of an enum value: lowercase, without the words every value starts with."""
    words = [v.name.split("_") for v in wire.enum_type.values]
    shared = next(i for i, column in enumerate(zip(*words, strict=False)) if len(set(column)) > 1)
    return "_".join(wire.enum_type.values_by_number[number].name.split("_")[shared:]).lower()


def assert_carries(value: Any, sent: Any, wire: FieldDescriptor, where: str) -> None:
    """`value` (the SDK's) holds what the field `wire` sent."""
    if _is_map(wire):
        assert dict(value) == dict(sent), where
    elif wire.message_type is not None and wire.is_repeated:
        assert len(value) == len(sent), where
        for i, (one, message) in enumerate(zip(value, sent, strict=True)):
            assert_message(one, message, f"{where}[{i}]")
    elif wire.message_type is not None:
        assert_message(value, sent, where)
    elif wire.type == FieldDescriptor.TYPE_ENUM:
        assert value == _enum_name(wire, sent), where
    elif wire.name.endswith("_json") and not isinstance(value, str):
        assert value == json.loads(sent), where
    elif wire.is_repeated:
        assert list(value) == list(sent), where
    else:
        assert value == sent, where


def assert_message(value: Any, sent: Message, where: str) -> None:
    if sent.DESCRIPTOR.full_name == TIMESTAMP:
        assert value == sent.ToDatetime(tzinfo=UTC), where
    elif type(value) in BY_SDK:
        assert_mirrors(BY_SDK[type(value)], value, sent, where)
    elif isinstance(value, dict):  # kept as its JSON mapping
        assert json_format.ParseDict(value, type(sent)()) == sent, where
    else:
        assert value == sent, where


def _field(message: Message, path: str) -> tuple[Any, FieldDescriptor]:
    *parents, name = path.split(".")
    for parent in parents:
        message = getattr(message, parent)
    return getattr(message, name), message.DESCRIPTOR.fields_by_name[name]


def assert_mirrors(mirror: Mirror, value: Any, sent: Message, where: str) -> None:
    assert isinstance(sent, mirror.message), where
    for name, path in expected_fields(mirror, sent.DESCRIPTOR).items():
        carried, wire = _field(sent, path)
        assert_carries(getattr(value, name), carried, wire, f"{where}.{name}")


@pytest.mark.parametrize("mirror", [m for m in MIRRORS if m.reads], ids=str)
def test_every_field_a_message_carries_reaches_the_dataclass(mirror):
    sent = fill(mirror.message())
    assert sent.ByteSize() > 0
    assert_mirrors(mirror, mirror.sdk.from_proto(sent), sent, mirror.sdk.__name__)
