"""The detector's commands: `models` (every model, or one with its manifest) and
`detect-images` (score images or texts with a model trained on their embeddings).

Reason to change: the detector commands' behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from oddity.cli import output
from oddity.cli.connection import Connection, connection_options, connects
from oddity.cli.exit_codes import reports_failures
from oddity.cli.items import read_items
from oddity.cli.options import JsonFlag, ThresholdPercentile
from oddity.client import DetectorClient, EmbedderClient, ModelDetails, OddityError
from oddity.common.clients.embedder import serving_command
from oddity.v1 import manifest_pb2


def _bounds(group: manifest_pb2.ModelGroup) -> str:
    bounds = group.bounds
    if not (bounds.HasField("lower") or bounds.HasField("upper")):
        return "-"
    lower = f"{bounds.lower:g}" if bounds.HasField("lower") else "-inf"
    upper = f"{bounds.upper:g}" if bounds.HasField("upper") else "inf"
    return f"[{lower}, {upper}{']' if bounds.upper_inclusive else ')'}"


def _show_model(details: ModelDetails) -> None:
    status, manifest = details.status, details.manifest
    lines = [
        f"[bold]{status.name}[/bold]  kind {status.kind or '-'}  serving version {status.serving_version or '-'}"
        + (f" (pinned {status.pinned_version})" if status.pinned_version else "")
        + ("  [red]unloaded[/red]" if status.unloaded else ""),
        f"features ({manifest.input_dimension}): {', '.join(manifest.feature_names) or 'unnamed'}",
        f"routing key: {manifest.routing_key or 'none'}",
    ]
    if manifest.HasField("embedding"):
        embedding = manifest.embedding
        extra = f" + {', '.join(embedding.extra_features)}" if embedding.extra_features else ""
        lines.append(f"embedding: {embedding.model} ({embedding.modality}, {embedding.dimension}){extra}")
    if manifest.class_labels:
        lines.append(f"classes: {', '.join(manifest.class_labels)}")
    for line in lines:
        output.out.print(line)
    rows = [
        (g.name, _bounds(g), g.threshold, g.threshold_percentile, g.train_samples, g.status_message or None)
        for g in manifest.groups
    ]
    columns = ("group", "bounds", "threshold", "percentile", "train samples", "note")
    output.show(output.table(None, columns, rows))


@reports_failures
@connection_options("detector", "embedder")
def models(
    name: Annotated[str | None, typer.Argument(help="One model: show its manifest.")] = None,
    json_output: JsonFlag = False,
    *,
    connection: Connection,
) -> None:
    """Models the detector knows: serving version, versions on disk, pins, refusals, and models
    trained on an encoder the embedder does not serve."""
    with cast(DetectorClient, connection.open("detector")) as client:
        if name is not None:
            details = client.model(name)
            if json_output:
                output.print_json(details.to_dict())
            else:
                _show_model(details)
            return
        statuses = client.models()
        sources = {s.name: _embedding(client, s.name) for s in statuses if s.serving_version}
    unserved = _unserved_encoders({n: e for n, e in sources.items() if e is not None}, connection)
    if json_output:
        output.print_json([s.to_dict() | {"encoder_problem": unserved.get(s.name)} for s in statuses])
        return
    rows = [
        (
            s.name,
            s.kind,
            s.serving_version or None,
            ", ".join(map(str, s.available_versions)) or None,
            s.pinned_version or None,
            s.unloaded,
            "; ".join(
                filter(
                    None,
                    [
                        unserved.get(s.name),
                        s.last_error or "; ".join(f"v{v}: {why}" for v, why in sorted(s.rejected_versions.items())),
                    ],
                )
            )
            or None,
        )
        for s in statuses
    ]
    columns = ("model", "kind", "serving", "available", "pinned", "unloaded", "problem")
    output.show(output.table(None, columns, rows))


def _embedding(client: DetectorClient, model: str) -> manifest_pb2.EmbeddingSource | None:
    manifest = client.model(model).manifest
    return manifest.embedding if manifest.HasField("embedding") else None


def _unserved_encoders(sources: dict[str, manifest_pb2.EmbeddingSource], connection: Connection) -> dict[str, str]:
    """Per model trained on embeddings whose encoder the embedder does not serve (by name, with
    the same weights and revision): what is wrong and the `oddity up --model` that serves it."""
    if not sources:
        return {}
    try:
        with cast(EmbedderClient, connection.open("embedder")) as embedder:
            served = {(m.name, m.model_id, m.revision) for m in embedder.models()}
    except OddityError as exc:
        return {name: f"the embedder does not answer ({exc.message})" for name in sources}
    return {
        name: f"the embedder does not serve {s.model} = {s.model_id}; "
        f"`{serving_command(s.model, s.model_id, s.modality)}` serves it"
        for name, s in sources.items()
        if (s.model, s.model_id, s.revision) not in served
    }


@reports_failures
@connects("detector")
def detect_images(
    files: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help="Images, or .txt files.")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Model trained on embeddings.")],
    routing_value: Annotated[
        list[float] | None,
        typer.Option(
            "--routing-value",
            "--age",
            help="Routing value (e.g. the child's age): one for every file, or one per file in order.",
        ),
    ] = None,
    threshold_percentile: ThresholdPercentile = None,
    json_output: JsonFlag = False,
    *,
    client: DetectorClient,
) -> None:
    """Score images (or texts) with a model trained on their embeddings."""
    values = list(routing_value or ())
    if len(values) not in (0, 1, len(files)):
        raise typer.BadParameter(
            f"give one routing value, or one per file ({len(files)}); got {len(values)}", param_hint="--routing-value"
        )
    items = read_items(files)
    result = client.detect_images(
        model, items.images, texts=items.texts, routing_values=values or None, threshold_percentile=threshold_percentile
    )
    if json_output:
        records = [{"file": str(f), **r} for f, r in zip(files, result.to_records(), strict=True)]
        output.print_json(
            {
                "model": result.model,
                "version": result.version,
                "embedder_model_id": result.embedder_model_id,
                "embedder_revision": result.embedder_revision,
                "items": records,
            }
        )
        return
    frame = result.to_frame()
    frame.insert(0, "file", [f.name for f in files])
    shown = [c for c in frame.columns if c not in ("threshold", "fallback")]
    title = f"{result.model} v{result.version}"
    output.show(output.table(title, shown, frame[shown].itertuples(index=False, name=None)))
