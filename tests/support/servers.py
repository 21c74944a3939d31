"""Real servers for tests: in a background thread (fast) or as a child process (signals,
memory). Both bind 127.0.0.1 on an ephemeral port and stop by themselves."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oddity.cli.supervisor import die_with_parent
from oddity.common.server import ServiceHost


class ServerThread:
    """Runs one ServiceHost on its own event loop in a daemon thread."""

    def __init__(self, make_host: Callable[[], ServiceHost]) -> None:
        self._make_host = make_host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)
        self._started: queue.Queue = queue.Queue()
        self.host: ServiceHost | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.host = self._make_host()
            self._loop.run_until_complete(self.host.start())
        except BaseException as exc:
            self._started.put(exc)
            return
        self._started.put(None)
        self._loop.run_until_complete(self.host.wait_stopped())
        # Let the stop coroutine scheduled by stop() run to its end.
        pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        if pending:
            self._loop.run_until_complete(asyncio.wait(pending, timeout=30))
        self._loop.close()

    def start(self) -> ServerThread:
        self._thread.start()
        error = self._started.get(timeout=60)
        if error is not None:
            raise error
        return self

    @property
    def port(self) -> int:
        return self.host.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def call(self, coro_factory: Callable[[], object], timeout: float = 30):
        """Run a coroutine on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro_factory(), self._loop).result(timeout)

    def stop(self, grace: float = 1.0) -> None:
        if self.host is None or not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.host.stop(grace), self._loop)
        future.result(timeout=60)
        self._thread.join(timeout=60)


def channel(target: str) -> grpc.Channel:
    limit = 256 * 1024 * 1024
    return grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    )


class ServiceProcess:
    """A service started as a child process (its console script's module); the bound port is
    read from its JSON 'serving' log line."""

    def __init__(
        self, module: str, args: list[str], env: dict[str, str] | None = None, preexec: Callable[[], None] | None = None
    ) -> None:
        self.module = module
        self.preexec = preexec  # run in the child before the service (e.g. joining a memory cgroup)
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0
        self.lines: list[str] = []
        self._lines: queue.Queue = queue.Queue()

    def start(self, timeout: float = 60) -> ServiceProcess:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-host",
                "127.0.0.1",
                "--metrics-port",
                "0",
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            # A test run that is killed (a CI timeout, Ctrl-C twice) leaves no server behind. The
            # kernel ties that signal to the thread that forks: a process started from another
            # thread (to export while others start) would die with that thread, so it goes without.
            preexec_fn=self._preexec(),
        )
        threading.Thread(target=self._read, daemon=True).start()
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.kill()
                raise TimeoutError(f"{self.module} did not start; output:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise RuntimeError(f"{self.module} exited with {self.proc.wait()}:\n" + "\n".join(self.lines))
            event = _json(line)
            if event.get("event") == "serving":
                self.port = int(event["port"])
                self.metrics_port = int(event.get("metrics_port") or 0)
                return self

    def _preexec(self) -> Callable[[], None] | None:
        dying = die_with_parent() if threading.current_thread() is threading.main_thread() else None
        hooks = [hook for hook in (self.preexec, dying) if hook is not None]
        if not hooks:
            return None

        def run() -> None:
            for hook in hooks:
                hook()

        return run

    def wait_ready(self, service: str, timeout: float = 60) -> None:
        """Poll grpc.health.v1 until the service's readiness is SERVING."""
        wait_serving(self.target, service, timeout)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def events(self, name: str) -> list[dict]:
        return [e for e in map(_json, list(self.lines)) if e.get("event") == name]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def wait_serving(target: str, service: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} at {target} is still {status}")
            time.sleep(0.05)


def embedder_process(cache_dir: Path, models: dict[str, dict], *args: str, port: int = 0) -> ServiceProcess:
    """An embedder as a child process serving `models` ({"vit": {"model_id": ..., "modality": ...}}),
    the first one the default; offline (no hub here)."""
    flags = ["--cache-dir", str(cache_dir), "--models", json.dumps(models), "--default-model", next(iter(models))]
    if port:
        flags += ["--port", str(port)]  # after the default --port 0: the last flag wins
    return ServiceProcess("oddity.embedder.main", [*flags, *args], env={"HF_HUB_OFFLINE": "1"}).start(timeout=180)


def wait_models(handle, timeout: float = 120) -> None:
    """Wait until every model of an embedder (a tests.conftest.ServiceHandle) serves: the
    embedder is ready with its first model, each model has its own "oddity.v1.Embedder/<name>"."""
    for name in handle.app.settings.models:
        wait_serving(handle.server.target, f"oddity.v1.Embedder/{name}", timeout)


def _json(line: str) -> dict:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
