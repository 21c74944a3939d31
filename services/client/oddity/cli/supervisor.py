"""Running the stack's services as child processes of this one: start them, read their log
lines, notice one that dies, stop them all (in order).

- Nothing starts before the folder is locked and the ports are checked (`oddity.cli.stack`):
  a second stack on the same folder or ports stops there, its one line said, the first one's
  logs untouched.
- The services needed at start are started at once (the gRPC addresses are fixed first), then
  waited for together: the panel comes after the slowest one's start, not after their sum.
- Each service is `python -m oddity.<service>.main` with this interpreter, in its own process
  group: a Ctrl-C in the terminal reaches this process only, which stops the services in order
  (SIGTERM, then their grace period). On Linux each child also gets SIGTERM when this process
  dies, however it dies (`PR_SET_PDEATHSIG`), so no service outlives its supervisor. Children
  are started from the thread that calls `Stack.start` and `Stack.check` (the main thread):
  the kernel ties that signal to the thread that forked.
- Every line a service writes goes to `<folder>/logs/<service>.log` and to the output's
  `line` (parsed when it is JSON); the bound ports come from the service's "serving" line.
- The embedder in `auto` mode starts when a dataset with `images:` or `texts:` is found, at
  start or on a later `check`.

Reason to change: how the services' processes are started, watched and stopped.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from oddity.cli.endpoints import ENDPOINTS, SERVICES, Service
from oddity.cli.stack import (
    FolderLock,
    StackError,
    StackSettings,
    check_ports,
    install_hint,
    metrics_url,
    missing_services,
    reserve_ports,
    service_args,
    service_env,
)

START_TIMEOUT_SECONDS = 120.0  # until a service's "serving" line (imports and binding; models load later)
STOP_MARGIN_SECONDS = 15.0  # beyond the grace period: the trainer ends a job at its next step
LAST_LINES = 200
DATASET_LOOK_SECONDS = 1.0  # how often `auto` looks for datasets that need the embedder
PR_SET_PDEATHSIG = 1


class StackOutput(Protocol):
    """Where the stack's lines and notes go."""

    def line(self, service: str, raw: str, event: dict[str, Any] | None) -> None: ...

    def note(self, message: str) -> None: ...


class ServiceFailed(Exception):
    """A service exited (or never started serving): its name, exit code and last lines."""

    def __init__(self, service: str, returncode: int | None, lines: list[str], reason: str = "") -> None:
        self.service = service
        self.returncode = returncode
        self.lines = lines
        if reason:
            self.reason = reason
        elif returncode is not None and returncode < 0:
            self.reason = f"the {service} was killed by {_signal_name(-returncode)}"
        else:
            self.reason = f"the {service} exited with code {returncode}"
        super().__init__(self.reason)


class Interrupted(Exception):
    """A stop was asked for while the stack was starting."""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def parse_line(line: str) -> dict[str, Any] | None:
    """A service's JSON log line as a dict; None for anything else (a traceback, a library's print)."""
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def die_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking the kernel to SIGTERM the child when its parent dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the hook ran
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


class ServiceProcess:
    """One service as a child process, its output read on a thread."""

    def __init__(self, name: Service, args: list[str], log_path: Path, output: StackOutput) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.output = output
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.metrics_port = 0
        self.serving = threading.Event()
        self._lines: collections.deque[str] = collections.deque(maxlen=LAST_LINES)
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", ENDPOINTS[self.name].module, *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env={**os.environ, **service_env(self.name)},
            process_group=0,
            preexec_fn=die_with_parent(),
        )
        assert self.proc.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self.proc.stdout,), name=f"oddity-{self.name}-output", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            for raw in stream:
                line = raw.rstrip("\n")
                self._lines.append(line)
                log.write(line + "\n")
                log.flush()
                event = parse_line(line)
                if event is not None and event.get("event") == "serving" and not self.serving.is_set():
                    self.port = int(event.get("port") or 0)
                    self.metrics_port = int(event.get("metrics_port") or 0)
                    self.serving.set()
                # A closed terminal must not stop the reading: the child would block on a full pipe.
                with contextlib.suppress(Exception):
                    self.output.line(self.name, line, event)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def last_lines(self, count: int) -> list[str]:
        """The last lines it wrote (all of them once it has exited and its output is read)."""
        if self._reader is not None and self.returncode is not None:
            self._reader.join(timeout=5)
        return list(self._lines)[-count:]

    def failure(self, reason: str = "") -> ServiceFailed:
        return ServiceFailed(self.name, self.returncode, self.last_lines(LAST_LINES), reason)

    def started(self, deadline: float, stop_requested: Callable[[], bool]) -> bool:
        """Whether it serves yet; raises when it exited, a stop was asked for, or `deadline`
        (time.monotonic) passed (then it is killed)."""
        if self.serving.is_set():
            return True
        if self.returncode is not None:
            raise self.failure()
        if stop_requested():
            raise Interrupted()
        if time.monotonic() > deadline:
            self.kill()
            raise self.failure(f"the {self.name} did not start serving within {START_TIMEOUT_SECONDS:g} s")
        return False

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@dataclass(frozen=True)
class Endpoint:
    service: Service
    target: str  # host:port for clients on this machine
    metrics_url: str | None
    state: str  # running, waiting (the embedder, until a dataset needs it), off


class Stack:
    """The three services of one folder: start, check, stop."""

    def __init__(self, settings: StackSettings, output: StackOutput) -> None:
        self.settings = settings
        self.output = output
        self.processes: dict[str, ServiceProcess] = {}
        self.targets: dict[Service, str] = {}
        self._lock = FolderLock(settings.folder)
        self._last_look = 0.0

    def check_installed(self) -> None:
        needed = tuple(s for s in SERVICES if s != "embedder" or self.settings.embedder != "off")
        missing = missing_services(needed)
        if missing:
            raise StackError(install_hint(missing))

    def start(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Lock the folder, check the ports, then start the services needed now (each told the
        addresses of those it calls) and wait until they serve. StackInUse says what is in the
        way; on a failure the services started are stopped and ServiceFailed says which and why."""
        self.settings.security.check()
        self.check_installed()
        self._lock.acquire()
        try:
            check_ports(self.settings)
            self.settings.folder.create()
            self._fix_addresses()
            needed: tuple[Service, ...] = ("detector", "trainer")
            if self._embedder_needed_now():
                needed = ("embedder", *needed)
            self._start(needed, stop_requested)
        except BaseException:
            self.stop()
            raise

    def _fix_addresses(self) -> None:
        """Every gRPC port decided (a free one for 0), so each service can be told the others'
        addresses before any of them serves; an embedder started later is found there too."""
        grpc = self.settings.ports.grpc
        free = iter(reserve_ports(self.settings.connect_host, sum(1 for name in SERVICES if not grpc[name])))
        self.settings = self.settings.with_ports({name: grpc[name] or next(free) for name in SERVICES})
        host = self.settings.connect_host
        self.targets = {name: f"{host}:{self.settings.ports.grpc[name]}" for name in SERVICES}

    def _embedder_needed_now(self) -> bool:
        mode = self.settings.embedder
        return mode == "on" or (mode == "auto" and bool(self.settings.folder.item_datasets()))

    def _start(self, names: tuple[Service, ...], stop_requested: Callable[[], bool]) -> None:
        """Start `names` at once and wait until every one of them serves."""
        for name in names:
            process = ServiceProcess(
                name,
                service_args(self.settings, name, self.targets),
                self.settings.folder.logs / f"{name}.log",
                self.output,
            )
            self.processes[name] = process
            process.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        waiting = [self.processes[name] for name in names]
        while waiting:
            waiting = [process for process in waiting if not process.started(deadline, stop_requested)]
            if waiting:
                time.sleep(0.05)

    def check(self, stop_requested: Callable[[], bool] = lambda: False) -> None:
        """Raise ServiceFailed when a service has exited; in `auto` mode start the embedder once
        a dataset needs it."""
        for process in self.processes.values():
            if process.returncode is not None:
                raise process.failure()
        if self.settings.embedder != "auto" or "embedder" in self.processes:
            return
        now = time.monotonic()
        if now - self._last_look < DATASET_LOOK_SECONDS:
            return
        self._last_look = now
        datasets = self.settings.folder.item_datasets()
        if datasets:
            self.output.note(f"starting the embedder: dataset {datasets[0]!r} has images or texts")
            self._start(("embedder",), stop_requested)
            self.output.note(f"embedder serving at {self.targets['embedder']}")

    def endpoints(self) -> list[Endpoint]:
        result = []
        shown: tuple[Service, ...] = ("detector", "trainer", "embedder")
        for name in shown:
            process = self.processes.get(name)
            if process is not None:
                url = metrics_url(self.settings, process.metrics_port) if process.metrics_port else None
                result.append(Endpoint(name, self.targets[name], url, "running"))
            else:
                state = "off" if self.settings.embedder == "off" else "waiting"
                result.append(Endpoint(name, self.targets.get(name, "-"), None, state))
        return result

    def stop(self, force: Callable[[], bool] = lambda: False) -> dict[str, int | None]:
        """SIGTERM to every service (the trainer first: it stops calling the others), wait for
        their grace period, then SIGKILL what is left (at once when `force()` turns true).
        Returns each service's exit code."""
        order = [self.processes[n] for n in ("trainer", "detector", "embedder") if n in self.processes]
        for process in order:
            process.terminate()
        deadline = time.monotonic() + self.settings.grace_period_seconds + STOP_MARGIN_SECONDS
        while any(p.returncode is None for p in order):
            if time.monotonic() > deadline or force():
                for process in order:
                    if process.returncode is None:
                        self.output.note(f"the {process.name} did not stop in time: killing it")
                        process.kill()
                break
            time.sleep(0.05)
        for process in order:
            process.last_lines(1)  # read the output to its end (the stop lines reach the log)
        self._lock.release()
        return {p.name: p.returncode for p in order}
