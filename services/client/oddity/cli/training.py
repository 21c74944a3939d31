"""The trainer's commands: `train` (and `--follow` a job to its end), `status`, `history`,
`threshold` and `rollback`.

`threshold` and `rollback` name a model or its dataset: the trainer acts on datasets, and a
dataset's model carries the dataset's name unless its spec names another.

Reason to change: the trainer commands' behaviour.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from oddity.cli import output
from oddity.cli.connection import connects
from oddity.cli.exit_codes import FAILED, reports_failures
from oddity.cli.options import JsonFlag
from oddity.client import DatasetStatus, GroupEvidence, Job, NotFound, TrainerClient

T = TypeVar("T")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str) -> datetime:
    """'90s', '15m', '1h', '2d', '1w' ago, or an ISO 8601 time (local time unless it has an offset)."""
    relative = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if relative:
        amount, unit = relative.groups()
        return datetime.now(UTC) - timedelta(**{UNITS[unit]: float(amount)})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter("give a time ago such as 30m, 1h, 2d, or an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.astimezone()


def _threshold_percentile(value: float) -> float:
    if not 0 <= value < 100:
        raise typer.BadParameter(f"{value:g} is not within (0, 100), nor 0 (clear the override)")
    return value


def _on_dataset(client: TrainerClient, name: str, action: Callable[[str], T]) -> T:
    """Run `action` on the dataset `name`, or else on the dataset whose model is `name`."""
    try:
        return action(name)
    except NotFound:
        dataset = client.dataset_of(name)
        if dataset == name:
            raise
        return action(dataset)


def _job_line(job: Job) -> str:
    parts = [f"job {job.id}", job.dataset, job.state]
    if job.phase:
        parts.append(job.phase)
    if job.group:
        parts.append(f"group {job.group}")
    if job.total_epochs and not job.counts_epochs:  # members or steps: no loss to show
        parts.append(f"{job.progress_unit} {job.epoch}/{job.total_epochs}")
    elif job.total_epochs:
        parts.append(f"epoch {job.epoch}/{job.total_epochs}")
        if job.train_loss or job.validation_loss:
            parts.append(f"train loss {job.train_loss:.4g} · val loss {job.validation_loss:.4g}")
        else:
            parts.append(f"loss {job.loss:.4g}")
        parts += [f"{name} {value:.3g}" for name, value in sorted(job.epoch_metrics.items())]
    if job.resumed_from_epoch:
        parts.append(f"(resumed from epoch {job.resumed_from_epoch})")
    return " · ".join(parts)


def _follow(client: TrainerClient, job: Job, json_output: bool) -> Job:
    """The job's updates until it ends: JSON lines, or phases and epochs live on stderr."""
    last = job
    if json_output:
        for last in client.watch_job(job.id):
            output.print_json_line(last.to_dict())
        return last
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=output.err) as progress:
        task = progress.add_task(_job_line(job), total=None)
        phase = ""
        for last in client.watch_job(job.id):
            if last.phase != phase:
                phase = last.phase
                progress.console.print(f"{last.dataset}: {phase}" + (f" (group {last.group})" if last.group else ""))
            progress.update(
                task,
                description=_job_line(last),
                total=last.total_epochs or None,
                completed=last.epoch if last.total_epochs else 0,
            )
    return last


def _finished(job: Job) -> None:
    if job.state == "succeeded":
        version = f": version {job.published_version} published" if job.published_version else ""
        output.out.print(f"job {job.id} succeeded{version}")
    elif job.state == "skipped":
        output.out.print(f"job {job.id} skipped: {job.message}")
    else:
        output.error(f"job {job.id} {job.state}: {job.message}")
        raise typer.Exit(FAILED)


@reports_failures
@connects("trainer")
def train(
    dataset: Annotated[str, typer.Argument(help="Dataset to train.")],
    force: Annotated[bool, typer.Option(help="Train even below min_samples or on unchanged data.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Follow the job to its end; exit 1 if it fails.")
    ] = False,
    data_path: Annotated[
        str | None, typer.Option(help="One file of the dataset's folder to train this job on (relative to it).")
    ] = None,
    model_kind: Annotated[str | None, typer.Option(help="Model kind for this job (e.g. knn, autoencoder).")] = None,
    json_output: JsonFlag = False,
    *,
    client: TrainerClient,
) -> None:
    """Start a training job (with --follow: show its phases and epochs until it ends).

    With --json --follow every update is printed as one JSON line; the last is the final state.
    """
    job = client.train(dataset, force=force, data_path=data_path, model_kind=model_kind)
    if not follow:
        if json_output:
            output.print_json(job.to_dict())
        else:
            output.out.print(f"job {job.id} {job.state} for dataset {job.dataset}")
        return
    final = _follow(client, job, json_output)
    if json_output:
        if final.state == "failed":
            raise typer.Exit(FAILED)
        return
    _finished(final)


@reports_failures
@connects("trainer")
def status(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Only this dataset.")] = None,
    json_output: JsonFlag = False,
    *,
    client: TrainerClient,
) -> None:
    """Datasets: their model, live version, samples, training in progress, decisions, errors."""
    statuses = client.status(dataset)
    if json_output:
        output.print_json([s.to_dict() for s in statuses])
        return
    rows = []
    for s in statuses:
        served = _served_percentile(s)
        decisions = []
        if s.pinned_version:
            decisions.append(f"pinned v{s.pinned_version} until {s.pinned_until}")
        if s.threshold_override and served != f"p{s.threshold_override:g}":
            decisions.append(f"threshold p{s.threshold_override:g} from the next version")
        elif s.threshold_override:
            decisions.append(f"threshold p{s.threshold_override:g}")
        rows.append(
            (
                s.dataset,
                s.model,
                s.kind,
                s.live_version or None,
                served,
                s.samples,
                _state(s),
                s.last_training_time,
                "; ".join(decisions) or None,
                (s.error or s.last_error) or None,
            )
        )
    columns = (
        "dataset",
        "model",
        "kind",
        "live",
        "threshold",
        "samples",
        "state",
        "last training",
        "decisions",
        "error",
    )
    output.show(output.table(None, columns, rows))
    for line in _choices_and_left_out(statuses):
        output.out.print(line, soft_wrap=True, markup=False)
    evaluated = [(s, g) for s in statuses for g in s.live_groups if g.evaluation]
    if evaluated:
        output.show(output.table("classifiers, on held-out rows", EVALUATION_COLUMNS, map(_evaluation_row, evaluated)))


def _served_percentile(status: DatasetStatus) -> str | None:
    """The threshold percentile the live version serves ("p95"; "p90-p95" when its groups differ)."""
    served = sorted({g.threshold_percentile for g in status.live_groups if g.status == "active"})
    if not served:
        return None
    return f"p{served[0]:g}" if len(served) == 1 else f"p{served[0]:g}-p{served[-1]:g}"


def _state(status: DatasetStatus) -> str:
    """What the dataset is doing: training, invalid, failing (and when it is tried again),
    waiting for a first model, or ready."""
    if status.training_in_progress:
        return "training"
    if not status.valid:
        return "invalid"
    if status.consecutive_failures:
        retry = status.next_retry_time
        if retry:
            when = f"next try at {retry.astimezone():%H:%M:%S}"
        elif status.policy == "manual":
            when = "oddity train tries again"
        else:
            when = "next try when the data changes"
        return f"failing ({when})"
    return "ready" if status.live_version else "no model yet"


def _choices_and_left_out(statuses: list[DatasetStatus]) -> list[str]:
    """One line per group whose kind chose a detector (what and why), one per dataset whose
    last load left columns out of the features for holding no numbers."""
    lines = []
    for s in statuses:
        if s.left_out_column_count:
            more = s.left_out_column_count - len(s.left_out_columns)
            names = ", ".join(s.left_out_columns) + (f" and {more} more" if more else "")
            lines.append(f"{s.dataset}: columns left out (not numeric): {names}")
        lines += [f"{s.dataset} · group {g.group}: {g.selection}" for g in s.live_groups if g.selection]
    return lines


EVALUATION_COLUMNS = ("dataset", "group", "rows", "balanced acc.", "macro F1", "ECE (before -> after T)", "score MAE")


def _evaluation_row(item: tuple[DatasetStatus, GroupEvidence]) -> tuple:
    status, group = item
    e = group.evaluation
    before, after = e.get("ece_before_temperature", 0), e.get("ece_after_temperature", 0)
    ece = f"{before:.3f} -> {after:.3f} (T {e.get('temperature', 1):.2f})"
    mae = e.get("score_mae")
    return (
        status.dataset,
        group.group,
        int(e.get("rows", 0)),
        f"{e.get('balanced_accuracy', 0):.3f}",
        f"{e.get('macro_f1', 0):.3f}",
        ece,
        f"{mae:.3g}" if mae is not None else None,
    )


@reports_failures
@connects("trainer")
def history(
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Only this dataset.")] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="Only this event type (repeatable), e.g. PUBLISHED, ROLLED_BACK."),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only events since then: 30m, 1h, 2d ago, or an ISO 8601 time.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest events to look at.")] = 100,
    json_output: JsonFlag = False,
    *,
    client: TrainerClient,
) -> None:
    """Training, publishing, rollback and threshold events, oldest first."""
    start = parse_since(since) if since else None
    types = [t.upper() for t in event_type or ()]
    events = client.history(dataset, types, since=start, limit=limit)
    if json_output:
        output.print_json([e.to_dict() for e in events])
        return
    rows = [(e.timestamp, e.event_type, e.dataset, e.message) for e in events]
    output.show(output.table(None, ("time", "event", "dataset", "message"), rows))


@reports_failures
@connects("trainer")
def threshold(
    model: Annotated[str, typer.Argument(help="Model (or its dataset).")],
    percentile: Annotated[
        float,
        typer.Option(
            callback=_threshold_percentile,
            help="Percentile of normal scores to flag above (0 < p < 100); 0 clears the override.",
        ),
    ],
    json_output: JsonFlag = False,
    *,
    client: TrainerClient,
) -> None:
    """Move a model's threshold without retraining (a new version; kept for later versions)."""
    change = _on_dataset(client, model, lambda dataset: client.set_threshold(dataset, percentile))
    if json_output:
        output.print_json(change.to_dict())
        return
    output.out.print(f"version {change.version} serves with the new threshold; {change.next}")


@reports_failures
@connects("trainer")
def rollback(
    model: Annotated[str, typer.Argument(help="Model (or its dataset).")],
    version: Annotated[
        int | None, typer.Option(min=1, help="Version to restore (default: the one before the live version).")
    ] = None,
    json_output: JsonFlag = False,
    *,
    client: TrainerClient,
) -> None:
    """Serve an earlier version again, as a new version that holds until the data changes."""
    rolled = _on_dataset(client, model, lambda dataset: client.rollback(dataset, version))
    if json_output:
        output.print_json(rolled.to_dict())
        return
    output.out.print(rolled.next or f"version {rolled.version} (a copy of version {rolled.restored_from}) serves")
