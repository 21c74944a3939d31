"""Packaging guarantees: stubs current, detector free of torch, generated imports clean."""

import subprocess
import sys

from tests.support.servers import repo_root


def test_generated_stubs_are_current():
    result = subprocess.run(
        [sys.executable, "protos/generate.py", "--check"], cwd=repo_root(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_detector_imports_neither_torch_nor_transformers():
    code = (
        "import sys, oddity.detector.main, oddity.v1.detector_pb2_grpc;"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
