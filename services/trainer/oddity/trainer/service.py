"""The trainer's use cases, free of protobuf: train a dataset, follow a job, dataset statuses,
the history, rollback and threshold moves.

A second Train for a dataset that is already training is refused (ALREADY_EXISTS, naming the
running job); automatic triggers are the auto-training policy's (auto_training.py).

Reason to change: what the Trainer API offers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oddity.common.errors import AlreadyExists, InvalidArgument, NotFound, shown
from oddity.common.logging import get_logger
from oddity.trainer import learners
from oddity.trainer.announcer import Announcer
from oddity.trainer.auto_training import Backoff
from oddity.trainer.data import STATE_FOLDER, DataError, data_path_file
from oddity.trainer.datasets import DatasetEntry, Datasets
from oddity.trainer.decisions import DecisionBook, Pin
from oddity.trainer.history import History
from oddity.trainer.jobs import Job, JobRequest
from oddity.trainer.publisher import Publisher, repository_error
from oddity.trainer.runner import JobRunner
from oddity.trainer.spec import DatasetSpec
from oddity.v1 import manifest_pb2

log = get_logger("oddity.trainer.service")


@dataclass(frozen=True)
class DatasetStatus:
    dataset: str
    valid: bool
    error: str
    model: str
    kind: str
    training_in_progress: bool
    last_training_time: datetime | None
    policy: str
    auto_enabled: bool
    interval_hours: float
    debounce_seconds: float
    min_samples: int
    samples: int
    group_samples: dict[str, int]
    last_error: str
    live_version: int
    data_fingerprint: str
    # The live version's groups (calibration evidence, ensemble members and their weights).
    live_groups: tuple[manifest_pb2.ModelGroup, ...] = ()
    pinned_version: int = 0
    pinned_until: str = ""
    threshold_override: float = 0.0
    consecutive_failures: int = 0
    next_retry_time: datetime | None = None
    # The last load's columns left out of the features for holding no numbers (the first few),
    # and how many there were.
    left_out_columns: tuple[str, ...] = ()
    left_out_column_count: int = 0


class TrainerService:
    def __init__(
        self,
        data_volume: Path,
        datasets: Datasets,
        runner: JobRunner,
        publisher: Publisher,
        announcer: Announcer,
        history: History,
        decisions: DecisionBook,
        backoff: Backoff,
    ) -> None:
        self.data_volume = data_volume
        self.decisions = decisions
        self.backoff = backoff
        self.datasets = datasets
        self.runner = runner
        self.publisher = publisher
        self.announcer = announcer
        self._history = history

    def recover(self) -> list[Job]:
        """After a crash: drop half-written versions, report interrupted jobs as failed (those
        with checkpoints wait for `resume_interrupted`)."""
        self.publisher.remove_unfinished()
        return self.runner.recover()

    def resume_interrupted(self) -> list[Job]:
        """After `recover`, on the event loop: jobs with checkpoints go on from the last one."""
        return self.runner.resume_interrupted()

    # -- jobs ------------------------------------------------------------------------------

    async def train(self, dataset: str, *, force: bool = False, data_path: str = "", model_kind: str = "") -> Job:
        await asyncio.to_thread(self.datasets.refresh)
        entry, spec = self.datasets.valid(dataset)
        override = await asyncio.to_thread(self._resolve_data_path, data_path, entry.folder) if data_path else None
        if model_kind and model_kind not in learners.kinds():
            raise InvalidArgument(f"unknown model_kind {model_kind!r}; choose one of {learners.kinds()}")
        if model_kind and learners.learner_class(model_kind).is_classifier_kind() != spec.is_classifier:
            raise InvalidArgument(f"model_kind {model_kind!r} does not fit dataset {dataset!r} (label: {spec.label})")
        if model_kind and spec.score_column and not learners.learner_class(model_kind).score_head:
            raise InvalidArgument(
                f"model_kind {model_kind!r} has no regression head for dataset {dataset!r}'s score_column "
                f"{spec.score_column!r}"
            )
        running = self.runner.running_for(dataset)
        if running is not None:
            raise AlreadyExists(f"dataset {dataset!r} is already training (job {running.id}); watch it or retry later")
        if self.decisions.get(dataset).pin is not None:
            log.info("Train ends the rollback hold", dataset=dataset)
        return self.runner.submit(
            JobRequest(
                dataset=dataset,
                folder=entry.folder,
                trigger="api",
                force=force,
                data_path=override,
                model_kind=model_kind or None,
            )
        )

    def _resolve_data_path(self, data_path: str, folder: Path) -> Path:
        """The file `data_path` names in the dataset's own folder, like every other read (see
        data.data_path_file); a hard link is looked for across the volume (it lists folders, so
        call it off the event loop)."""
        link_roots = (self.data_volume, self.datasets.root, self.data_volume / STATE_FOLDER)
        try:
            return data_path_file(data_path, folder, self.data_volume, link_roots)
        except DataError as exc:
            raise InvalidArgument(str(exc)) from exc
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long, ... are the caller's mistake
            reason = getattr(exc, "strerror", None) or exc  # an OSError's text would repeat the whole path
            raise InvalidArgument(f"data_path {shown(data_path)!r} is not a usable path: {reason}") from exc

    def get_job(self, job_id: str) -> Job:
        job = self.runner.job(job_id)
        if job is None:
            raise NotFound(f"job {shown(job_id)!r} not found")
        return job

    def watch_job(self, job_id: str) -> AsyncIterator[Job]:
        """The job now and after each change until it ends; NotFound at once for an unknown id."""
        self.get_job(job_id)
        return self.runner.watch(job_id)

    # -- status and history ----------------------------------------------------------------

    async def statuses(self, dataset: str = "") -> list[DatasetStatus]:
        await asyncio.to_thread(self.datasets.refresh)  # fingerprints read files: off the event loop
        entries = [self.datasets.get(dataset)] if dataset else self.datasets.entries()
        return [self._status(entry) for entry in entries]

    def _status(self, entry: DatasetEntry) -> DatasetStatus:
        spec = entry.spec
        run = self.runner.last_run(entry.name)
        live = self.datasets.live_manifest(entry.model)
        decided = self.decisions.get(entry.name)
        # A manual dataset is never retried by itself: no retry time to announce.
        automatic = spec is not None and spec.retrain.policy != "manual"
        retry = self.backoff.next_retry(run, entry.fingerprint) if automatic else None
        return DatasetStatus(
            dataset=entry.name,
            valid=spec is not None,
            error=entry.error,
            model=entry.model,
            kind=spec.model.kind if spec else "",
            training_in_progress=self.runner.running_for(entry.name) is not None,
            last_training_time=run.trained_at,
            policy=spec.retrain.policy if spec else "",
            auto_enabled=bool(spec and spec.retrain.policy != "manual"),
            interval_hours=spec.retrain.interval_hours if spec else 0.0,
            debounce_seconds=spec.retrain.debounce_seconds if spec else 0.0,
            min_samples=spec.min_samples if spec else 0,
            samples=run.samples,
            group_samples=run.group_samples,
            last_error=run.error,
            live_version=self.datasets.live_version(entry.model),
            data_fingerprint=entry.fingerprint,
            live_groups=tuple(live.groups) if live is not None else (),
            pinned_version=decided.pin.version if decided.pin else 0,
            pinned_until=_pinned_until(decided.pin),
            threshold_override=decided.threshold_percentile,
            consecutive_failures=run.failures,
            next_retry_time=datetime.fromtimestamp(retry, UTC) if retry is not None else None,
            left_out_columns=run.left_out_columns,
            left_out_column_count=run.left_out_column_count,
        )

    async def history(
        self, dataset: str = "", event_types: tuple[str, ...] = (), limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest `limit` matching events, oldest first."""
        return await asyncio.to_thread(self._history.read, dataset, event_types, limit)

    # -- rollback and thresholds -----------------------------------------------------------

    async def rollback(self, dataset: str, version: int) -> tuple[int, int, str]:
        """Serve an earlier version again (0: the newest complete one before the live one), as
        a new version that holds until the data changes (or Train, with after_rollback: hold);
        returns (new, restored, what happens next)."""
        spec = await self._spec(dataset)
        entry = self.datasets.get(dataset)
        hold = spec.retrain.after_rollback == "hold"
        # Pinned before the rolled-back version appears, so no scan in between retrains it away;
        # a rollback that fails puts back the pin there was (an earlier rollback's hold).
        earlier = self.decisions.get(dataset).pin
        await asyncio.to_thread(self.decisions.pin, dataset, Pin(0, version, entry.fingerprint, hold=hold))
        try:
            new, restored = await asyncio.to_thread(
                self.publisher.rollback, spec.name, version, spec.keep_versions
            )
        except BaseException as exc:
            if earlier is None:
                await asyncio.to_thread(self.decisions.unpin, dataset)
            else:
                await asyncio.to_thread(self.decisions.pin, dataset, earlier)
            if isinstance(exc, OSError):
                raise repository_error(self.publisher.repository, exc) from exc
            raise
        pin = Pin(new, restored, entry.fingerprint, hold=hold)
        await asyncio.to_thread(self.decisions.pin, dataset, pin)
        await asyncio.to_thread(
            self._history.append,
            "ROLLED_BACK",
            dataset,
            f"version {restored} of {spec.name} serves again as version {new}",
            version=new,
            restored_from=restored,
            model=spec.name,
        )
        await self._announce(dataset, spec.name, new, reason="rollback")
        return new, restored, f"version {new} (a copy of version {restored}) serves until {_pinned_until(pin)}" + (
            "" if pin.hold else "; then the trainer retrains"
        )

    async def set_threshold(self, dataset: str, percentile: float) -> tuple[int, str]:
        """Move every group's threshold to `percentile` of its out-of-fold normal scores, as a
        new version, and keep it for later versions (0: back to the spec's percentile); returns
        (version, what happens next)."""
        spec = await self._spec(dataset)
        override = percentile
        if percentile == 0:
            percentile = spec.threshold_percentile
        try:
            version, thresholds = await asyncio.to_thread(
                self.publisher.set_threshold, spec.name, percentile, spec.keep_versions
            )
        except OSError as exc:
            raise repository_error(self.publisher.repository, exc) from exc
        await asyncio.to_thread(self.decisions.set_threshold, dataset, override)
        pin = self.decisions.get(dataset).pin
        if pin is not None:  # the rolled-back bundle serves on, under its new number
            await asyncio.to_thread(self.decisions.pin, dataset, replace(pin, version=version))
        await asyncio.to_thread(
            self._history.append,
            "THRESHOLD_CHANGED",
            dataset,
            f"threshold of {spec.name} moved to percentile {percentile:g}",
            version=version,
            percentile=percentile,
            thresholds=thresholds,
            model=spec.name,
        )
        await self._announce(dataset, spec.name, version, reason="threshold")
        if override:
            return version, f"later versions keep percentile {override:g} until SetThreshold(0) clears it"
        return version, f"later versions use the spec's threshold_percentile ({percentile:g})"

    async def _spec(self, dataset: str) -> DatasetSpec:
        await asyncio.to_thread(self.datasets.refresh)
        return self.datasets.valid(dataset)[1]

    async def _announce(self, dataset: str, model: str, version: int, **details: Any) -> None:
        await asyncio.to_thread(self.announcer.record, dataset, model, version, **details)
        await self.announcer.notify(model)


def _pinned_until(pin: Pin | None) -> str:
    if pin is None:
        return ""
    return "Train is called (after_rollback: hold)" if pin.hold else "the data changes"
