"""The README's Python client example runs as written against real services (only the
addresses are the test's)."""

import contextlib
import io
import re

import pytest

from oddity.client import DetectorClient
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.servers import repo_root
from tests.support.waiting import wait_for


def readme_python_example() -> str:
    section = (repo_root() / "README.md").read_text().split("## Python client", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


@pytest.mark.slow
def test_the_readme_example_runs(data_volume, repository, tmp_path, monkeypatch):
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    try:
        normal = datasets.sensor_frame(300)
        datasets.write_dataset(data_volume, "sensors", datasets.autoencoder_spec(), {"rows.csv": normal})
        with DetectorClient(detector.server.target) as client:
            wait_for(lambda: [m for m in client.models() if m.serving_version == 1], 120, "version 1 serving")
        readings = datasets.sensor_frame(20, seed=5)
        readings.iloc[:3] = datasets.anomalies(readings.iloc[:3])
        monkeypatch.chdir(tmp_path)
        readings.to_csv("new_readings.csv", index=False)

        code = readme_python_example()
        code = code.replace("127.0.0.1:50052", detector.server.target).replace("127.0.0.1:50053", trainer.server.target)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
        lines = printed.getvalue().splitlines()
        assert "published version 2" in lines
        assert "version 3 is a copy of version 1" in lines
        with DetectorClient(detector.server.target) as client:
            wait_for(lambda: client.model("sensors").status.serving_version == 3, 60, "the copy of version 1 serving")
    finally:
        trainer.close()
        detector.close()
