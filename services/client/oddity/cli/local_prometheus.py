"""`oddity up --prometheus`: a Prometheus on this machine scraping the local stack, so the
dashboard (deploy/grafana/) has data without a cluster.

With Debian's `prometheus` on PATH it runs as a child of `oddity up`, on
`<folder>/prometheus/` (its config and its data) and logging to `<folder>/logs/prometheus.log`,
with the project's recording rules when the source tree is at hand (the dashboard's request,
anomaly-rate and embedder panels read them). Without it, `oddity up` prints the scrape config
to give a Prometheus of your own. The scrape jobs are named as in Kubernetes
(`oddity-detector`, ...), which the dashboard's `service` variable lists.

Reason to change: how the local stack is watched.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from oddity.cli.stack import StackSettings

EXECUTABLE = "prometheus"
DEFAULT_PORT = 9090
SCRAPE_INTERVAL = "5s"
# deploy/prometheus/rules.yml of a source checkout (editable installs); absent from wheels.
RULES = Path(__file__).resolve().parents[4] / "deploy" / "prometheus" / "rules.yml"


def scrape_config(settings: StackSettings, metrics_ports: Mapping[str, int]) -> str:
    """prometheus.yml for the stack's /metrics endpoints (services without a known port left out)."""
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "::", "") else settings.metrics_host
    lines = ["global:", f"  scrape_interval: {SCRAPE_INTERVAL}", f"  evaluation_interval: {SCRAPE_INTERVAL}"]
    if RULES.is_file():
        lines += ["rule_files:", f"  - {RULES}"]
    lines.append("scrape_configs:")
    token = settings.security.metrics_token_file
    for service, port in metrics_ports.items():
        if not port:
            continue
        lines += [f"  - job_name: oddity-{service}", "    static_configs:", f"      - targets: ['{host}:{port}']"]
        if token is not None:
            lines += ["    authorization:", f"      credentials_file: {Path(token).resolve()}"]
    return "\n".join(lines) + "\n"


class LocalPrometheus:
    """Debian's prometheus, run for the stack until `stop`."""

    def __init__(self, folder: Path, logs: Path, port: int) -> None:
        self.folder = folder
        self.logs = logs
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def installed() -> bool:
        return shutil.which(EXECUTABLE) is not None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, config: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        config_file = self.folder / "prometheus.yml"
        config_file.write_text(config)
        with (self.logs / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    EXECUTABLE,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
