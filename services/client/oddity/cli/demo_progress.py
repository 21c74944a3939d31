"""Following the demo's datasets from written to serving: the trainer picks each up, trains,
validates and publishes it, the detector swaps the new version in.

A dataset is ready when the trainer's live version of it was trained on the files as they
are now (the detector's manifest carries the data fingerprint the trainer reports for the
current files) and the detector serves that version. So a dataset already trained on the
same data (a second run with the same seed) is ready at once, and one being retrained is not
ready until the new version serves. The job of a dataset is found in the history (its
TRAINING_STARTED event names it) and its phase, group and epochs are shown as they change.

Reason to change: how the demo decides a dataset is trained and served, and how it shows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from oddity.cli import output
from oddity.cli.demo_data import DemoDataset
from oddity.client import DatasetStatus, DetectorClient, Job, NotFound, TrainerClient

STEPS = ("picked up", "trained", "validated", "published", "serving")
# Steps done while the job is in a phase (a phase not named here: picked up).
PHASE_STEPS = {"calibrating": 2, "validating": 2, "exporting": 3, "publishing": 3, "done": 4}
POLL_SECONDS = 0.5
# The trainer sees a new dataset at once through file events, else at its next scan (every 30 s
# by default): one it has not listed after this long is not on its data volume.
FIND_SECONDS = 75.0


@dataclass
class Tracked:
    dataset: DemoDataset
    model: str = ""
    job_id: str = ""
    step: int = 0  # of STEPS done
    detail: str = "waiting for the trainer to find it"
    version: int = 0
    error: str = ""
    ready: bool = False

    @property
    def done(self) -> bool:
        return self.ready or bool(self.error)


class DemoTimeout(Exception):
    """The datasets were not all served in time."""


def _job_detail(job: Job) -> str:
    parts = [job.phase or job.state]
    if job.group:
        parts.append(f"group {job.group}")
    if job.total_epochs:
        parts.append(f"{job.progress_unit or 'epoch'} {job.epoch}/{job.total_epochs}")
    return " · ".join(parts)


class Follower:
    """One poll at a time over every dataset not done yet."""

    def __init__(
        self, trainer: TrainerClient, detector: DetectorClient, datasets: list[DemoDataset], since: datetime
    ) -> None:
        self.trainer = trainer
        self.detector = detector
        self.since = since
        self.tracked = [Tracked(d) for d in datasets]
        self.started = time.monotonic()

    def poll(self) -> None:
        statuses = {s.dataset: s for s in self.trainer.status()}
        serving = {m.name: m.serving_version for m in self.detector.models()}
        for item in self.tracked:
            if not item.done:
                self._poll_one(item, statuses.get(item.dataset.name), serving)

    def _poll_one(self, item: Tracked, status: DatasetStatus | None, serving: dict[str, int]) -> None:
        if status is None:
            if time.monotonic() - self.started > FIND_SECONDS:
                item.error = (
                    f"the trainer at {self.trainer.target} has not found it in {FIND_SECONDS:g} s: is "
                    f"{item.dataset.held_out.parent.parent} the data volume it runs on (--data-volume)?"
                )
            return
        if not status.valid:
            item.error = f"dataset.yaml is invalid: {status.error}"
            return
        item.model = status.model
        job = self._job(item)
        if job is not None:
            if job.state == "failed":
                item.error = f"training failed: {job.message}"
                return
            if job.state in ("queued", "running"):
                item.step = max(item.step, PHASE_STEPS.get(job.phase, 1) if job.state == "running" else 0)
                item.detail = _job_detail(job) if job.state == "running" else "queued behind another job"
                return
        if self._serves_current_data(item, status, serving):
            item.ready = True
            item.version = status.live_version
            item.step = len(STEPS)
            item.detail = f"version {item.version} serves"
            return
        if job is not None and job.state == "skipped":
            item.error = f"training skipped: {job.message}"
        elif job is not None and job.state == "succeeded":
            item.step = max(item.step, 4)
            item.detail = f"version {job.published_version} published; the detector is loading it"
        elif job is None:
            item.detail = "found; waiting for its files to settle"

    def _job(self, item: Tracked) -> Job | None:
        """The newest job of this dataset since the demo wrote it."""
        events = self.trainer.history(item.dataset.name, "TRAINING_STARTED", since=self.since)
        if events:
            item.job_id = str(events[-1].details.get("job_id", "")) or item.job_id
        if not item.job_id:
            return None
        try:
            return self.trainer.job(item.job_id)
        except NotFound:
            return None

    def _serves_current_data(self, item: Tracked, status: DatasetStatus, serving: dict[str, int]) -> bool:
        if not status.live_version or status.training_in_progress:
            return False
        if serving.get(status.model) != status.live_version:
            return False
        manifest = self.detector.model(status.model).manifest
        return manifest.version == status.live_version and manifest.data_fingerprint == status.data_fingerprint


def follow(
    follower: Follower,
    timeout: float,
    check: Callable[[], None],
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> list[Tracked]:
    """Poll until every dataset is served or failed, with a progress bar per dataset on stderr
    (lines when stderr is not a terminal). `check` raises when the stack the demo started fails."""
    live = output.err.is_terminal
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[name]:<15}"),
        BarColumn(bar_width=24),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    deadline = clock() + timeout
    shown: dict[str, str] = {}
    with Progress(*columns, console=output.err, disable=not live) as progress:
        tasks = {
            t.dataset.name: progress.add_task(t.detail, total=len(STEPS), name=t.dataset.name) for t in follower.tracked
        }
        while True:
            check()
            follower.poll()
            for item in follower.tracked:
                text = f"[red]{item.error}" if item.error else item.detail
                progress.update(tasks[item.dataset.name], completed=item.step, description=text)
                if not live and shown.get(item.dataset.name) != text:
                    shown[item.dataset.name] = text
                    output.note(f"{item.dataset.name}: {item.error or item.detail}", style="red" if item.error else "")
            if all(item.done for item in follower.tracked):
                return follower.tracked
            if clock() > deadline:
                late = [t.dataset.name for t in follower.tracked if not t.done]
                raise DemoTimeout(f"not served within {timeout:g} s: {', '.join(late)}")
            sleep(POLL_SECONDS)
