"""Process-wide settings of the trainer, made once at start-up: torch's thread count (a
property of the process, not of a job: jobs run in threads, so setting it per job let one job
change another's), the learner kinds other distributions add (`oddity.learners` entry
points), and the imports a first job would otherwise pay on its way to serving, made on a
background thread while the trainer waits for data (`prewarm`; jobs wait for it to end).

Reason to change: what the trainer process sets up once for every job.
"""

from __future__ import annotations

import importlib
import os
import threading
import time

import torch

from oddity.common.logging import get_logger
from oddity.trainer.learners import load_entry_points

log = get_logger("oddity.trainer.runtime")

# What a first job imports that start-up does not: torch.optim imports torch._dynamo (and with
# it sympy, torch.fx, ...) when the first optimizer is made, some 3 s of one core.
PREWARMED_MODULES = ("torch._dynamo",)

_prewarms: list[threading.Thread] = []


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_torch_threads(threads: int) -> int:
    """torch's intra-op thread count for the whole process; 0: one per usable core."""
    count = threads or usable_cores()
    torch.set_num_threads(count)
    return count


def prewarm() -> None:
    """Import PREWARMED_MODULES on a background thread, so a landing does not wait for them."""
    _prewarms[:] = [thread for thread in _prewarms if thread.is_alive()]
    thread = threading.Thread(target=_import_prewarmed, name="oddity-prewarm", daemon=True)
    _prewarms.append(thread)
    thread.start()


def _import_prewarmed() -> None:
    start = time.perf_counter()
    try:
        for name in PREWARMED_MODULES:
            importlib.import_module(name)
    except Exception:  # the job that needs the module imports it again and reports the failure
        log.exception("prewarming imports failed", modules=PREWARMED_MODULES)
        return
    log.info("imports prewarmed", modules=PREWARMED_MODULES, seconds=round(time.perf_counter() - start, 2))


def wait_prewarmed() -> None:
    """Until the prewarm imports are done (at once when none runs). A job imports after them:
    two threads importing the same modules at once can see each other's half-run modules."""
    for thread in list(_prewarms):
        thread.join()


def configure(torch_threads: int) -> None:
    """Everything the trainer sets once, before its first job."""
    threads = set_torch_threads(torch_threads)
    added = load_entry_points()
    prewarm()
    log.info("trainer runtime configured", torch_threads=threads, learner_plugins=added)
