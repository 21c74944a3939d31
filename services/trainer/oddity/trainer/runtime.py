"""Process-wide settings of the trainer, made once at start-up: torch's thread count (a
property of the process, not of a job: jobs run in threads, so setting it per job let one job
change another's) and the learner kinds other distributions add (`oddity.learners` entry
points).

Reason to change: what the trainer process sets up once for every job.
"""

from __future__ import annotations

import os

import torch

from oddity.common.logging import get_logger
from oddity.trainer.learners import load_entry_points

log = get_logger("oddity.trainer.runtime")


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_torch_threads(threads: int) -> int:
    """torch's intra-op thread count for the whole process; 0: one per usable core."""
    count = threads or usable_cores()
    torch.set_num_threads(count)
    return count


def configure(torch_threads: int) -> None:
    """Everything the trainer sets once, before its first job."""
    threads = set_torch_threads(torch_threads)
    added = load_entry_points()
    log.info("trainer runtime configured", torch_threads=threads, learner_plugins=added)
