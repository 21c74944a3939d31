import numpy as np
import pytest

from oddity.common.errors import InvalidArgument
from oddity.common.tensors import array_to_tensor, tensor_to_array
from oddity.v1 import tensor_pb2


def test_raw_bytes_round_trip_without_copy():
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = array_to_tensor(rows)
    decoded = tensor_to_array(tensor)
    assert decoded.shape == (3, 4)
    np.testing.assert_array_equal(decoded, rows)
    assert not decoded.flags.owndata  # a view on the message bytes


def test_big_endian_input_is_encoded_little_endian():
    rows = np.arange(4, dtype=">f4").reshape(1, 4)
    np.testing.assert_array_equal(tensor_to_array(array_to_tensor(rows)), rows.astype(np.float32))


def test_repeated_values_path_and_single_row_shape():
    assert tensor_to_array(tensor_pb2.Tensor(values=[1, 2, 3])).shape == (1, 3)
    decoded = tensor_to_array(tensor_pb2.Tensor(shape=[2, 2], values=[1, 2, 3, 4]))
    np.testing.assert_array_equal(decoded, [[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (tensor_pb2.Tensor(shape=[2, 3], raw_data=b"\0" * 20), "raw_data has 20 bytes; shape [2, 3] needs 24"),
        (tensor_pb2.Tensor(raw_data=b"\0" * 8), "shape is required with raw_data"),
        (tensor_pb2.Tensor(shape=[2, 2], values=[1, 2, 3]), "values has 3 numbers; shape [2, 2] needs 4"),
        (tensor_pb2.Tensor(shape=[1, 1], raw_data=b"\0" * 4, values=[1]), "set raw_data or values, not both"),
        (tensor_pb2.Tensor(shape=[1, 2, 2], values=[1, 2, 3, 4]), "must be [rows, features]"),
        (tensor_pb2.Tensor(), "is empty"),
        (tensor_pb2.Tensor(shape=[0, 4]), "is empty"),
        (tensor_pb2.Tensor(shape=[-1, 4], raw_data=b"\0" * 16), "negative dimension"),
    ],
)
def test_malformed_tensors_are_named(tensor, message):
    with pytest.raises(InvalidArgument, match=message.replace("[", r"\[").replace("]", r"\]")):
        tensor_to_array(tensor)
