"""The Detect wire format without per-row Python and without copying the rows.

Decoding: protobuf's Python API copies a bytes field twice (into the parsed message, then
out of it on every access), which for a 4096 x 769 request is 25 MB of copies. A large
request is walked instead: the rows tensor's `raw_data` stays a view into the request bytes
(numpy reads it in place) and protobuf parses everything else.

Encoding: an answer's columns are packed repeated fields, so they are written straight from
numpy arrays; per-row strings (groups, predicted classes) and explanations are gathered from
tables of encoded entries. Protobuf merges concatenated messages, so the small fields are
serialized by protobuf and the columns appended.

Reason to change: the wire format of DetectRequest/DetectResponse, or how it is parsed and
written.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from google.protobuf.message import Message

from oddity.v1 import detector_pb2, tensor_pb2

# Below this size protobuf's own parser is faster than walking the fields in Python.
WALK_FROM_BYTES = 64 * 1024


def field_number(message: type[Message], name: str) -> int:
    """A field's number as the descriptors say (never a literal: a renumbered field in the
    .proto would otherwise be read and written silently wrong)."""
    return message.DESCRIPTOR.fields_by_name[name].number


_ROWS_FIELD = field_number(detector_pb2.DetectRequest, "rows")
_RAW_DATA_FIELD = field_number(tensor_pb2.Tensor, "raw_data")
_FEATURES_FIELD = field_number(detector_pb2.Explanation, "features")
_NAME_FIELD = field_number(detector_pb2.FeatureContribution, "name")
_INDEX_FIELD = field_number(detector_pb2.FeatureContribution, "index")
_CONTRIBUTION_FIELD = field_number(detector_pb2.FeatureContribution, "contribution")
_ERROR_FIELD = field_number(detector_pb2.FeatureContribution, "error")
# Wire types (the encoding's, not the .proto's).
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a valid protobuf message."""


@dataclass(slots=True)
class DecodedDetect:
    """A DetectRequest whose rows' raw_data may live outside the message (see module docstring)."""

    message: detector_pb2.DetectRequest
    rows_raw: memoryview | None = None  # rows.raw_data as a view into the request bytes


def decode_detect_request(data: bytes) -> DecodedDetect:
    if len(data) < WALK_FROM_BYTES:
        return DecodedDetect(detector_pb2.DetectRequest.FromString(data))
    view = memoryview(data)
    kept: list[memoryview] = []
    tensors: list[memoryview] = []
    for number, wire_type, start, value_start, end in message_fields(view, 0, len(view)):
        if number == _ROWS_FIELD and wire_type == _LENGTH:
            tensors.append(view[value_start:end])
        else:
            kept.append(view[start:end])
    message = detector_pb2.DetectRequest.FromString(b"".join(kept))
    raw: memoryview | None = None
    for tensor in tensors:  # repeated occurrences of a message field merge, in order
        rest = []
        for number, wire_type, start, value_start, end in message_fields(tensor, 0, len(tensor)):
            if number == _RAW_DATA_FIELD and wire_type == _LENGTH:
                raw = tensor[value_start:end]  # a singular bytes field: the last one wins
            else:
                rest.append(tensor[start:end])
        message.rows.MergeFromString(b"".join(rest))
    return DecodedDetect(message, raw)


def raw_rows(tensor: tensor_pb2.Tensor, raw_data: memoryview | None = None) -> np.ndarray | None:
    """The rows of a well-formed [rows, features] tensor of raw float32 data, read in place;
    None for any other tensor (`oddity.common.tensors.tensor_to_array` decodes those, or says
    what is wrong with them). The common case without that function's general checks."""
    shape = tensor.shape
    if len(shape) != 2 or tensor.values:
        return None
    rows, features = shape[0], shape[1]
    raw = tensor.raw_data if raw_data is None else raw_data
    if rows <= 0 or features <= 0 or len(raw) != rows * features * _FLOAT32.itemsize:
        return None
    return np.frombuffer(raw, dtype=_FLOAT32).reshape(rows, features)


_FLOAT32 = np.dtype("<f4")


def _varint(data: memoryview, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def message_fields(data: memoryview, i: int, end: int):
    """(field number, wire type, start of the tag, start of the value, end) of each field."""
    while i < end:
        start = i
        key, i = _varint(data, i, end)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        value_start = i
        if wire_type == _VARINT:
            _, i = _varint(data, i, end)
        elif wire_type == _FIXED64:
            i += 8
        elif wire_type == _LENGTH:
            length, value_start = _varint(data, i, end)
            i = value_start + length
        elif wire_type == _FIXED32:
            i += 4
        else:
            raise WireError(f"wire type {wire_type} of field {number} is not supported")
        if i > end:
            raise WireError(f"field {number} runs past the end of the message")
        yield number, wire_type, start, value_start, i


# -- encoding -------------------------------------------------------------------------------


def varints(values: np.ndarray) -> np.ndarray:
    """Unsigned integers (< 2**35) as protobuf varints, concatenated, as uint8."""
    values = np.asarray(values, dtype=np.uint64)
    if values.size == 0 or int(values.max()) < 0x80:
        return values.astype(np.uint8)
    sizes = np.ones(values.shape, dtype=np.intp)
    for bits in (7, 14, 21, 28):
        sizes += values >= (1 << bits)
    starts = np.cumsum(sizes) - sizes
    out = np.empty(int(sizes.sum()), dtype=np.uint8)
    for byte in range(5):
        has = sizes > byte
        if not has.any():
            break
        more = np.where(sizes[has] > byte + 1, 0x80, 0)
        out[starts[has] + byte] = ((values[has] >> np.uint64(7 * byte)) & np.uint64(0x7F)).astype(np.uint8) | more
    return out


def _varint_bytes(value: int) -> bytes:
    """One varint (tags and lengths: numpy costs more than this loop for a single number)."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(0x80)]


def length_tag(number: int) -> bytes:
    """The tag of a length-delimited field."""
    tag = _TAGS.get(number)
    if tag is None:
        tag = _TAGS[number] = _varint_bytes(number << 3 | _LENGTH)
    return tag


_TAGS: dict[int, bytes] = {}  # length-delimited tags by field number


def length_delimited(number: int, payload: bytes) -> bytes:
    return length_tag(number) + _varint_bytes(len(payload)) + payload


def packed_column(tag: bytes, values: np.ndarray, dtype: np.dtype | str | type) -> bytes:
    """A packed repeated field of fixed-size values (its `tag` from `length_tag`): the values
    as `dtype`, little-endian (b"" when there are none)."""
    if not len(values):
        return b""
    data = np.asarray(values, dtype=dtype).tobytes()
    return tag + _varint_bytes(len(data)) + data


@functools.lru_cache(maxsize=1024)
def fixed_columns(columns: tuple[tuple[bytes, str], ...], rows: int) -> tuple[struct.Struct, tuple[bytes, ...]]:
    """For packed fields of `rows` values each, given as (tag from `length_tag`, struct code:
    "d" a double, "?" a bool), a Struct that writes them all in one call from (prefix, *values)
    per field, and each field's prefix (tag and length). Small answers: one call instead of a
    numpy array and a join per field."""
    layout, prefixes = "<", []
    for tag, code in columns:
        prefix = tag + _varint_bytes(rows * struct.calcsize("<" + code))
        layout += f"{len(prefix)}s{rows}{code}"
        prefixes.append(prefix)
    return struct.Struct(layout), tuple(prefixes)


def packed_doubles(number: int, values: np.ndarray) -> bytes:
    return packed_column(length_tag(number), values, "<f8")


def packed_uints(number: int, values: np.ndarray) -> bytes:
    return length_delimited(number, varints(values).tobytes()) if len(values) else b""


def gather(table: Sequence[bytes], indices: np.ndarray) -> bytes:
    """table[i] for every i of `indices`, concatenated, without a Python loop over indices."""
    if len(indices) == 0:
        return b""
    if len(table) == 1:
        return table[0] * len(indices)
    lengths = np.fromiter((len(entry) for entry in table), dtype=np.intp, count=len(table))
    source_starts = np.cumsum(lengths) - lengths
    source = np.frombuffer(b"".join(table), dtype=np.uint8)
    return segments(source, source_starts[indices], lengths[indices])


def segments(source: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> bytes:
    """source[starts[i] : starts[i] + lengths[i]] for every i, concatenated (uint8 source)."""
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    shift = np.repeat(starts - out_starts, lengths)
    return source[shift + np.arange(total)].tobytes()


def repeated_strings(number: int, names: Sequence[str], indices: np.ndarray) -> bytes:
    """A repeated string field holding names[i] for every i of `indices`."""
    table = [length_delimited(number, name.encode()) for name in names]
    return gather(table, indices)


def explanations(number: int, feature_names: Sequence[str], indices, errors, shares) -> bytes:
    """A repeated Explanation field: per row, its top features as FeatureContribution
    messages {name, index, contribution, error}; indices/errors/shares are [rows, k]."""
    n, k = indices.shape
    if n == 0 or k == 0:
        return b""
    # Per feature that some row names (not every feature of the model: one row of a 769-feature
    # model names k), the constant part of its FeatureContribution: name and index fields.
    features, slots = np.unique(indices, return_inverse=True)
    slots = slots.reshape(n, k)  # per entry, its feature's position in `features`
    bodies = [
        length_delimited(_NAME_FIELD, (feature_names[f] if feature_names else f"#{f}").encode())
        + (_INDEX_TAG + _varint_bytes(f) if f else b"")
        for f in features.tolist()
    ]
    # Then contribution and error (fixed64 each): _DOUBLES.itemsize bytes per entry.
    doubles = np.empty(n * k, dtype=_DOUBLES)
    doubles["contribution_tag"], doubles["error_tag"] = _CONTRIBUTION_TAG, _ERROR_TAG
    doubles["contribution"], doubles["error"] = shares.reshape(-1), errors.reshape(-1)
    size = _DOUBLES.itemsize
    # Each entry of Explanation.features: tag, length, body, the doubles.
    heads = [_FEATURES_TAG + _varint_bytes(len(body) + size) + body for body in bodies]
    head_lengths = np.array([len(h) for h in heads], dtype=np.intp)
    entry_lengths = head_lengths[slots] + size  # [n, k]
    row_lengths = entry_lengths.sum(axis=1)
    distinct, row_head_index = np.unique(row_lengths, return_inverse=True)
    row_heads = [_varint_bytes(number << 3 | _LENGTH) + _varint_bytes(int(length)) for length in distinct]
    # One source holding every piece; the answer is a gather of its segments in order.
    pieces = [b"".join(heads), doubles.tobytes(), b"".join(row_heads)]
    offsets = np.cumsum([0] + [len(p) for p in pieces])
    source = np.frombuffer(b"".join(pieces), dtype=np.uint8)
    head_starts = offsets[0] + np.cumsum(head_lengths) - head_lengths
    row_head_lengths = np.array([len(h) for h in row_heads], dtype=np.intp)
    row_head_starts = offsets[2] + np.cumsum(row_head_lengths) - row_head_lengths
    # Segments per row: its head, then per entry the feature's head and its doubles.
    starts = np.empty((n, 1 + 2 * k), dtype=np.intp)
    lengths = np.empty((n, 1 + 2 * k), dtype=np.intp)
    starts[:, 0], lengths[:, 0] = row_head_starts[row_head_index], row_head_lengths[row_head_index]
    starts[:, 1::2], lengths[:, 1::2] = head_starts[slots], head_lengths[slots]
    starts[:, 2::2] = offsets[1] + size * np.arange(n * k).reshape(n, k)
    lengths[:, 2::2] = size
    return segments(source, starts.reshape(-1), lengths.reshape(-1))


_FEATURES_TAG = _varint_bytes(_FEATURES_FIELD << 3 | _LENGTH)
_INDEX_TAG = _varint_bytes(_INDEX_FIELD << 3 | _VARINT)
_CONTRIBUTION_TAG = _varint_bytes(_CONTRIBUTION_FIELD << 3 | _FIXED64)
_ERROR_TAG = _varint_bytes(_ERROR_FIELD << 3 | _FIXED64)
# A FeatureContribution's two doubles with their tags, as one record per entry.
_DOUBLES = np.dtype(
    [
        ("contribution_tag", f"V{len(_CONTRIBUTION_TAG)}"),
        ("contribution", "<f8"),
        ("error_tag", f"V{len(_ERROR_TAG)}"),
        ("error", "<f8"),
    ]
)
