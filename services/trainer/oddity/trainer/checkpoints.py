"""Training checkpoints: the trainer's own, private record of a job's epochs, so a job whose
trainer was killed goes on from its last checkpoint when the trainer starts again.

A job's checkpoints live in `<state dir>/checkpoints/<job id>/<group>.pt` (the data volume's
`.oddity/`, never the model repository): state dicts, numbers and strings written with
`torch.save` (to a temporary file, then renamed, so a kill leaves the previous checkpoint
whole) and read with `torch.load(weights_only=True)`, which refuses anything but tensors and
plain containers: a checkpoint never runs code. Each carries the key of what it was trained
on (data, labels, parameters); a checkpoint with another key is ignored and training starts
over.

Reason to change: where checkpoints live and how they are written, read and removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oddity.common.logging import get_logger

log = get_logger("oddity.trainer.checkpoints")

FORMAT = 1
SUFFIX = ".pt"


@dataclass(frozen=True)
class GroupCheckpoints:
    """The checkpoint of one group of one job; `on_resume(epoch)` is told when training goes
    on from it."""

    path: Path
    on_resume: Callable[[int], None] | None = None

    def save(self, key: str, epoch: int, state: dict[str, Any]) -> None:
        """Replace the checkpoint with `state` after `epoch` (atomic: written, synced, renamed)."""
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with temporary.open("wb") as f:
            torch.save({"format": FORMAT, "key": key, "epoch": epoch, "state": state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)

    def load(self, key: str) -> tuple[int, dict[str, Any]] | None:
        """(epoch, state) of the checkpoint made for `key`; None when there is none, it was made
        for other data or parameters, or it cannot be read (training then starts over)."""
        import torch

        if not self.path.exists():
            return None
        try:
            record = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a truncated or foreign file
            log.warning("checkpoint unreadable; training starts over", path=str(self.path), error=str(exc))
            return None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("key") != key:
            log.warning("checkpoint made for other data or parameters; training starts over", path=str(self.path))
            return None
        epoch = int(record["epoch"])
        log.info("training resumes from a checkpoint", path=str(self.path), epoch=epoch)
        if self.on_resume is not None:
            self.on_resume(epoch)
        return epoch, record["state"]


class CheckpointStore:
    """Every job's checkpoints under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def job(self, job_id: str) -> JobCheckpoints:
        return JobCheckpoints(self.root / job_id)

    def has(self, job_id: str) -> bool:
        folder = self.root / job_id
        return folder.is_dir() and any(folder.glob(f"*{SUFFIX}"))

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def remove_all_but(self, keep: set[str]) -> list[str]:
        """After a restart: drop the checkpoints of jobs that will not resume."""
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for folder in self.root.iterdir():
                if folder.name not in keep:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder.name)
        return removed


@dataclass(frozen=True)
class JobCheckpoints:
    """The checkpoints of one job, one per group."""

    folder: Path

    def group(self, name: str, on_resume: Callable[[int], None] | None = None) -> GroupCheckpoints:
        return GroupCheckpoints(self.folder / f"{name}{SUFFIX}", on_resume)
