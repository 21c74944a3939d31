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
from oddity.client import ClustersResult, SimilarResult, TagSuggestions

SHOWN_CLUSTER_TAGS = 3


@dataclass
class LibraryExample:
    """What the library's index answers: the items nearest to one item, the clusters, and the
    tags suggested for a new image (with the tags it was drawn with)."""

    query: str  # the item whose nearest items are shown
    query_tags: tuple[str, ...]
    similar: SimilarResult
    clusters: ClustersResult
    image: Path  # the new image
    image_tags: tuple[str, ...]  # what it shows
    suggested: TagSuggestions

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.similar.model,
            "version": self.similar.version,
            "similar": {"id": self.query, "tags": list(self.query_tags), **self.similar.to_dict()},
            "clusters": self.clusters.to_dict(),
            "tags": {"image": str(self.image), "true_tags": list(self.image_tags), **self.suggested.to_dict()},
        }


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
    library: LibraryExample | None = None

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
            "library": self.library.to_dict() if self.library else None,
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
    if outcome.library is not None:
        _show_library(outcome.library)
    for dataset, reason in {**outcome.failed, **outcome.skipped}.items():
        style = "red" if dataset in outcome.failed else "yellow"
        output.out.print(f"{dataset}: {reason}", style=style)
    output.out.print(f"done in {outcome.seconds:.0f} s; data in {outcome.folder}")
    output.out.print("where to look next:", style="bold")
    for step in outcome.next_steps:
        output.out.print(f"  {step}")


def _show_library(example: LibraryExample) -> None:
    similar = example.similar
    rows = [(rank, i.id, i.similarity, ", ".join(i.tags)) for rank, i in enumerate(similar.items, 1)]
    title = (
        f"{similar.model} v{similar.version}: the items nearest to {example.query} ({', '.join(example.query_tags)})"
    )
    output.show(output.table(title, ("rank", "id", "similarity", "tags"), rows))
    clusters = example.clusters
    groups = "; ".join(f"{c.size} ({', '.join(c.top_tags[:SHOWN_CLUSTER_TAGS])})" for c in clusters.clusters)
    output.out.print(f"clusters: {len(clusters.clusters)}: {groups}; {clusters.unclustered} items in none")
    suggested = ", ".join(f"{s.tag} ({s.score:.2f})" for s in example.suggested.suggestions)
    output.out.print(
        f"tags suggested for the new image {example.image.name} (drawn as {', '.join(example.image_tags)}): "
        f"{suggested or 'none'}"
    )


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
    if outcome.library is not None:
        steps.append(
            f"oddity similar demo-library --id {outcome.library.query}{flags['detector']}   (and clusters, tags)"
        )
    return steps


def restart_command(folder: Path, models: tuple[EmbedderModel, ...]) -> str:
    """`oddity up` on the demo's folder with the embedder models its stack served."""
    return " ".join(
        [f"oddity up --data-volume {folder}", *(f"--model {m.name}={m.modality}:{m.model_id}" for m in models)]
    )
