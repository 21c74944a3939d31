"""A memory limit for a child process, as a pod's limit sets it: a memory cgroup (v2, or v1's
memory controller) that the child joins before it runs, and its peak usage afterwards.
RLIMIT_AS would not do: it counts address space (thread stacks, libraries' reservations),
which is many times the memory a Python service uses."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class MemoryCgroup:
    path: Path
    v2: bool

    def join(self) -> Callable[[], None]:
        """A pre-exec hook that moves the child into the cgroup (before it allocates anything)."""
        procs = self.path / "cgroup.procs"

        def hook() -> None:
            procs.write_text(str(os.getpid()))

        return hook

    def peak_bytes(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        if self.v2:
            events = dict(line.split() for line in (self.path / "memory.events").read_text().splitlines())
            return int(events.get("oom_kill", 0))
        control = dict(line.split() for line in (self.path / "memory.oom_control").read_text().splitlines())
        return int(control.get("oom_kill", 0))


def cgroup_parent() -> tuple[Path, bool] | None:
    """Where this machine lets us make a memory cgroup (None: nowhere writable)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        own = Path((Path("/proc/self/cgroup").read_text().splitlines()[0]).split("::", 1)[-1].lstrip("/"))
        parent = CGROUP_ROOT / own
        if "memory" in (parent / "cgroup.subtree_control").read_text() and os.access(parent, os.W_OK):
            return parent, True
        return None
    v1 = CGROUP_ROOT / "memory"
    return (v1, False) if v1.is_dir() and os.access(v1, os.W_OK) else None


@contextmanager
def memory_limit(limit_bytes: int) -> Iterator[MemoryCgroup]:
    """A fresh memory cgroup limited to `limit_bytes` (no swap either), removed afterwards."""
    found = cgroup_parent()
    if found is None:
        raise RuntimeError("no writable memory cgroup on this machine (run as root with cgroups mounted)")
    parent, v2 = found
    path = parent / f"oddity-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        if v2:
            (path / "memory.max").write_text(str(limit_bytes))
            (path / "memory.swap.max").write_text("0")
        else:
            (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
            swap = path / "memory.memsw.limit_in_bytes"
            if swap.exists():
                swap.write_text(str(limit_bytes))
        yield MemoryCgroup(path, v2)
    finally:
        with contextlib.suppress(OSError):  # a process still in it: the caller kills its processes first
            path.rmdir()
