"""Request builders shared by tests and benchmarks."""

from __future__ import annotations

import numpy as np

from oddity.common.tensors import array_to_tensor
from oddity.v1 import detector_pb2


def detect_request(model: str, rows: np.ndarray, **fields) -> detector_pb2.DetectRequest:
    return detector_pb2.DetectRequest(model=model, rows=array_to_tensor(np.atleast_2d(rows)), **fields)
