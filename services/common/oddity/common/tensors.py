"""oddity.v1.Tensor <-> numpy. The raw-bytes path decodes without copying.

Reason to change: the Tensor wire format.
"""

from __future__ import annotations

import math

import numpy as np

from oddity.common.errors import InvalidArgument
from oddity.v1 import tensor_pb2

FLOAT32_LE = np.dtype("<f4")


def tensor_to_array(
    tensor: tensor_pb2.Tensor, *, field: str = "rows", raw_data: bytes | memoryview | None = None
) -> np.ndarray:
    """Decode a float32 tensor to a 2-D array [rows, features] (read-only on the raw path).
    `raw_data` stands in for the tensor's raw_data when the caller kept it out of the message."""
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{field}.shape {shape} has a negative dimension")
    # Read the field once: every access to a bytes field copies it out of the message.
    raw, n_values = tensor.raw_data if raw_data is None else raw_data, len(tensor.values)
    if raw and n_values:
        raise InvalidArgument(f"{field}: set raw_data or values, not both")
    if raw:
        if not shape:
            raise InvalidArgument(f"{field}.shape is required with raw_data")
        expected = math.prod(shape) * FLOAT32_LE.itemsize
        if len(raw) != expected:
            raise InvalidArgument(
                f"{field}.raw_data has {len(raw)} bytes; shape {shape} needs {expected} (little-endian float32)"
            )
        array = np.frombuffer(raw, dtype=FLOAT32_LE)
    else:
        if not shape:
            shape = [n_values]
        if math.prod(shape) != n_values:
            raise InvalidArgument(f"{field}.values has {n_values} numbers; shape {shape} needs {math.prod(shape)}")
        array = np.asarray(tensor.values, dtype=np.float32)
    if len(shape) == 1:
        shape = [1, shape[0]]
    if len(shape) != 2:
        raise InvalidArgument(f"{field}.shape {shape} must be [rows, features] or [features]")
    if shape[0] == 0 or shape[1] == 0:
        raise InvalidArgument(f"{field} is empty (shape {shape})")
    return array.reshape(shape)


def array_to_tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    """Encode an array as float32 raw bytes (the fast path)."""
    data = np.ascontiguousarray(array, dtype=FLOAT32_LE)
    return tensor_pb2.Tensor(shape=list(data.shape), raw_data=data.tobytes())
