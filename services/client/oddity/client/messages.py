"""From the services' protobuf messages to the SDK's frozen dataclasses, field by field, driven
by the message's descriptor rather than copied by hand:

    Job.from_proto(job)  ==  from_message(Job, job)
    SimilarItem.from_proto(item)  ==  from_message(SimilarItem, item, cluster=_cluster(item.cluster))

Each dataclass field takes the message field of the same name, made plain: scalars as they
are, enums as their lowercase names without the enum's prefix (JOB_STATE_RUNNING -> "running"),
timestamps as aware UTC datetimes (None when unset), maps as dicts sorted by key (a map has no
order on the wire), repeated scalars as tuples. Nested messages and fields that are renamed or
converted otherwise are given by the caller, by name, so every exception is written where the
dataclass is made. tests/client/test_sdk_mirrors.py keeps the dataclasses' fields equal to the
messages'.

Reason to change: how a message's fields become plain Python values.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")
TIMESTAMP = timestamp_pb2.Timestamp.DESCRIPTOR.full_name


def timestamp(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """A protobuf timestamp as an aware UTC datetime; None when unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


@functools.cache
def enum_names(enum: EnumDescriptor) -> dict[int, str]:
    """Each value of an enum by its lowercase name without the enum's prefix:
    GroupStatus's GROUP_STATUS_INSUFFICIENT_DATA -> "insufficient_data"."""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    return {value.number: value.name.removeprefix(prefix).lower() for value in enum.values}


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _sorted_dict(value: Any) -> dict[Any, Any]:
    return dict(sorted(value.items()))


def _converter(field: FieldDescriptor) -> Callable[[Any], Any]:
    """How one field's value is made plain (see the module docstring)."""
    if _is_map(field):
        return _sorted_dict
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.is_repeated or field.message_type.full_name != TIMESTAMP:
            raise TypeError(f"{field.full_name} is a message: give its value")
        return timestamp
    if field.type == FieldDescriptor.TYPE_ENUM:
        names = enum_names(field.enum_type)
        if field.is_repeated:
            return lambda numbers: tuple(names.get(n, str(n)) for n in numbers)
        return lambda number: names.get(number, str(number))
    return tuple if field.is_repeated else _as_is


def _as_is(value: Any) -> Any:
    return value


@functools.cache
def _copied(
    target: type[DataclassInstance], descriptor: Descriptor, given: frozenset[str]
) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """The message fields copied into `target` (each of its fields not given), with how."""
    copied = []
    for name in (f.name for f in dataclasses.fields(target) if f.init and f.name not in given):
        field = descriptor.fields_by_name.get(name)
        if field is None:
            raise TypeError(f"{target.__name__}.{name}: {descriptor.full_name} has no field {name!r}; give its value")
        copied.append((name, _converter(field)))
    return tuple(copied)


def from_message(target: type[T], message: Message, **given: Any) -> T:
    """A `target` whose fields are the message's fields of the same names, made plain (see the
    module docstring); `given` holds the values of the fields that need more."""
    copied = _copied(target, message.DESCRIPTOR, frozenset(given))
    return target(**{name: convert(getattr(message, name)) for name, convert in copied}, **given)
