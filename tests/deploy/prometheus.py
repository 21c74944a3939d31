"""A real Prometheus server for tests (Debian's `prometheus` package, which `bash scripts/dev
setup` installs): bound to 127.0.0.1 on a free port, temporary storage, stopped by its owner."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

INSTALL = "`bash scripts/dev setup` installs Debian's prometheus package (apt-get install prometheus)"


def tool(name: str) -> str:
    """The path of `promtool` or `prometheus`; fails the test (never skips) when it is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: {INSTALL}", pytrace=False)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrometheusServer:
    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self.log = folder / "prometheus.log"

    def start(self, timeout: float = 60) -> PrometheusServer:
        binary = tool("prometheus")
        config_file = self.folder / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config, sort_keys=False))
        for _attempt in range(3):  # the free port may be taken between the look and the bind
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config_file}",
                        f"--storage.tsdb.path={self.folder / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1d",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.folder,
                )
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                        if response.status == 200:
                            return self
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"prometheus did not start:\n{self.log.read_text(errors='replace')}")

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer, else an AssertionError with
        Prometheus' error (a query that does not parse, ...)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        assert body.get("status") == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "matrix"), f"{expr}: a {data['resultType']}, not series"
        return data["result"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
