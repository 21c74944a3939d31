"""The scratch memory a model graph takes per row it scores, declared in the manifest
(`ModelGroup.scratch_bytes_per_row`) so the detector can keep one request within its memory
budget by sizing its ONNX Runtime runs.

ONNX shape inference gives every intermediate tensor's shape with the row count as its first,
symbolic dimension; the per-row cost is the sum of their other dimensions' products: an upper
bound (ONNX Runtime reuses buffers), which is what a budget needs. A kNN graph's rows x
reference matrices dominate (about 320 KB a row against 20,000 reference rows); a dimension
inference cannot name (an operator of another domain) counts as the input's width.

Reason to change: how a graph's memory per row is worked out.
"""

from __future__ import annotations

import onnx
from onnx import shape_inference

# Bytes of the element types a graph may hold per row; others count as 8.
_ELEMENT_BYTES = {
    onnx.TensorProto.FLOAT: 4,
    onnx.TensorProto.INT32: 4,
    onnx.TensorProto.INT64: 8,
    onnx.TensorProto.DOUBLE: 8,
    onnx.TensorProto.BOOL: 1,
    onnx.TensorProto.FLOAT16: 2,
}


def scratch_bytes_per_row(graph: bytes, width: int) -> int:
    """Bytes per row of every tensor the graph computes for a batch of rows [N, width]; 0
    (undeclared: the detector's smaller default runs) for bytes ONNX cannot read, which the
    detector refuses to load anyway."""
    try:
        model = shape_inference.infer_shapes(onnx.load_from_string(graph))
    except Exception:  # DecodeError, InferenceError and other parser errors
        return 0
    total = 0
    for value in [*model.graph.value_info, *model.graph.output]:
        if not value.type.HasField("tensor_type"):
            total += width * 8  # sequences and maps (a classifier's ZipMap): about a row's width
            continue
        tensor = value.type.tensor_type
        element = _ELEMENT_BYTES.get(tensor.elem_type, 8)
        if not tensor.HasField("shape"):
            total += width * element
            continue
        dims = list(tensor.shape.dim)
        if not dims or dims[0].HasField("dim_value"):
            continue  # not per row (weights, constants, shapes)
        per_row = 1
        for dim in dims[1:]:
            per_row *= dim.dim_value if dim.HasField("dim_value") else width
        total += per_row * element
    return total
