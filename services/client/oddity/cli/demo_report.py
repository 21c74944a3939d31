"""What `oddity demo` reports: its outcome as a table for people or as JSON (`--json`),
and where to look next.

Reason to change: what the demo prints at its end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from oddity.cli import demo_data, output
from oddity.cli.demo_scoring import GroupFigures
from oddity.cli.endpoints import ENDPOINTS, Service
from oddity.cli.stack import EmbedderModel


@dataclass
class Outcome:
    """What the demo did, for the table and --json."""

    folder: Path
    started_stack: bool
    seed: int
    figures: list[GroupFigures] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # dataset -> why
    skipped: dict[str, str] = field(default_factory=dict)  # dataset -> why (no model to embed it)
    seconds: float = 0.0
    image_model: str = ""
    next_steps: list[str] = field(default_factory=list)
    targets: dict[Service, str] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_volume": str(self.folder),
            "started_stack": self.started_stack,
            "seed": self.seed,
            "seconds": round(self.seconds, 1),
            "image_model": self.image_model,
            "targets": self.targets,
            "metrics": self.metrics,
            "results": [f.to_dict() for f in self.figures],
            "failed": self.failed,
            "skipped": self.skipped,
            "next": self.next_steps,
        }


def show(outcome: Outcome) -> None:
    """The figures as a table on stdout, then what failed or was skipped, then where to look."""
    rows = [
        (
            f.model,
            f.version,
            f.group,
            f"{f.rows} ({f.normal}/{f.anomalous})",
            f.roc_auc,
            f"{f.flagged_normal:.0%}",
            f"{f.flagged_anomalous:.0%}",
            f"{f.accuracy:.1%}" if f.accuracy is not None else None,
            f.top_explanation,
        )
        for f in outcome.figures
    ]
    columns = (
        "model",
        "version",
        "group",
        "rows (normal/anomalous)",
        "ROC-AUC",
        "flagged normal",
        "flagged anomalous",
        "accuracy",
        "top feature of the most unusual row",
    )
    output.show(output.table("Held-out samples, scored by the serving models", columns, rows))
    output.out.print(
        "demo-decisions is a classifier: its anomalous rows are the true denials, flagged = predicted deny, "
        "ROC-AUC of P(deny).",
        style="dim",
    )
    for dataset, reason in {**outcome.failed, **outcome.skipped}.items():
        style = "red" if dataset in outcome.failed else "yellow"
        output.out.print(f"{dataset}: {reason}", style=style)
    output.out.print(f"done in {outcome.seconds:.0f} s; data in {outcome.folder}")
    output.out.print("where to look next:", style="bold")
    for step in outcome.next_steps:
        output.out.print(f"  {step}")


def _flags(targets: dict[Service, str]) -> dict[Service, str]:
    """The address options a command needs: none for a service at its default address."""
    return {s: f" --{s} {t}" if t != ENDPOINTS[s].default_target else "" for s, t in targets.items()}


def next_steps(outcome: Outcome, running: bool, restart: str) -> list[str]:
    flags = _flags(outcome.targets)
    steps = []
    if not running:
        steps.append(f"the demo's stack is stopped; start it again on its folder: {restart}")
        flags = {s: "" for s in flags}
    elif outcome.metrics:
        steps += [f"metrics: {url}" for url in outcome.metrics.values()]
    steps += [
        f"oddity status{flags['trainer']}   (datasets, live versions, calibration)",
        f"oddity history --since 1h{flags['trainer']}   (training, publishing events)",
        f"oddity models demo-sensors{flags['detector']}   (the manifest: features, groups, thresholds)",
        f"oddity score {demo_data.held_out_path(outcome.folder, 'demo-sensors')} --model demo-sensors"
        f"{flags['detector']}",
        f"scored held-out files: {outcome.folder / 'demo'}/*-scored.csv",
    ]
    return steps


def restart_command(folder: Path, models: tuple[EmbedderModel, ...]) -> str:
    """`oddity up` on the demo's folder with the embedder models its stack served."""
    return " ".join(
        [f"oddity up --data-volume {folder}", *(f"--model {m.name}={m.modality}:{m.model_id}" for m in models)]
    )
