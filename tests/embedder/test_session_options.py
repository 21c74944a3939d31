"""ONNX Runtime session settings: chosen per machine, and providers checked against this build."""

import os

import onnxruntime as ort
import pytest
from pydantic import ValidationError

from oddity.embedder.session_options import SessionConfig
from oddity.embedder.settings import EmbedderSettings


def test_defaults_use_every_usable_core_without_spinning():
    settings = EmbedderSettings()  # type: ignore[call-arg]
    options = settings.session_config().session_options()
    assert options.intra_op_num_threads == len(os.sched_getaffinity(0))
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert settings.session_config().describe()["providers"] == ["CPUExecutionProvider"]


def test_settings_are_passed_to_the_session():
    config = SessionConfig(intra_op_threads=1, spinning=True, graph_optimization="basic")
    options = config.session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_a_provider_this_onnxruntime_lacks_is_refused_naming_the_available_ones():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(ValidationError) as error:
        EmbedderSettings(execution_providers=["CUDAExecutionProvider", "CPUExecutionProvider"])  # type: ignore[call-arg]
    message = str(error.value)
    assert "execution provider(s) ['CUDAExecutionProvider'] not available in onnxruntime" in message
    assert f"available: {ort.get_available_providers()}" in message
    assert "install onnxruntime-gpu in place of onnxruntime for CUDA" in message
