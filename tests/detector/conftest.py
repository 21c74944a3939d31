"""Fixtures shared by the detector tests."""

import numpy as np
import pytest

from oddity.v1 import detector_pb2, manifest_pb2
from tests.support import models

D = 8


@pytest.fixture
def routed(repository, detector):
    """Age groups 3-6 and 6-9 trained on different data; 9-12 lacks data; plus `all`."""
    young, older = models.normal_rows(2000, D, seed=20), models.normal_rows(2000, D, seed=21, shift=4.0)
    fits = {
        "age_3_6": models.fit_pca_group(young, components=3),
        "age_6_9": models.fit_pca_group(older, components=3),
        "all": models.fit_pca_group(np.vstack([young, older]), components=3),
    }
    groups = {
        "age_3_6": (models.group_proto("age_3_6", fits["age_3_6"], lower=3, upper=6), fits["age_3_6"].onnx),
        "age_6_9": (models.group_proto("age_6_9", fits["age_6_9"], lower=6, upper=9), fits["age_6_9"].onnx),
        "age_9_12": (
            models.group_proto(
                "age_9_12",
                None,
                lower=9,
                upper=12,
                upper_inclusive=True,
                status=manifest_pb2.GROUP_STATUS_INSUFFICIENT_DATA,
            ),
            None,
        ),
        "all": (models.group_proto("all", fits["all"]), fits["all"].onnx),
    }
    models.publish(repository, "drawings", groups, dimension=D, routing_key="age")
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="drawings"))
    return detector, fits, young, older
