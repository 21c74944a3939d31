"""The reference docs cannot drift: docs/configuration.md is what the settings classes say,
and docs/api.md's table names every RPC of every service with the role it needs."""

import re
import subprocess
import sys

from oddity.detector import oip_api
from oddity.detector.app import DetectorApp
from oddity.embedder.app import EmbedderApp
from oddity.trainer.app import TrainerApp
from oddity.v1 import detector_pb2, embedder_pb2, trainer_pb2
from tests.support.servers import repo_root


def test_the_configuration_reference_is_current():
    result = subprocess.run(
        [sys.executable, "scripts/configuration_reference.py", "--check"],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_the_api_table_names_every_rpc_and_its_role():
    section = (repo_root() / "docs" / "api.md").read_text().split("\n## ", 1)[0]
    listed: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2] in ("read", "admin"):
            for name in re.findall(r"`([A-Za-z]+)`", cells[1]):
                listed[name] = cells[2]
    expected: dict[str, str] = {}
    for module, app in ((detector_pb2, DetectorApp), (trainer_pb2, TrainerApp), (embedder_pb2, EmbedderApp)):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                expected[method.name] = "admin" if method.name in app.admin_methods else "read"
    expected |= {name: "admin" if name in DetectorApp.admin_methods else "read" for name in oip_api.SERVED_METHODS}
    assert listed == expected
