"""`oddity embed FILES...`: vectors of images (or .txt files' texts) from the embedder.

Reason to change: the embed command's behaviour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from oddity.cli import output
from oddity.cli.connection import connects
from oddity.cli.exit_codes import reports_failures
from oddity.cli.items import read_items
from oddity.cli.options import JsonFlag
from oddity.client import EmbedderClient
from oddity.common.errors import FailedPrecondition

SHOWN_VALUES = 4  # leading values per vector in the table


@reports_failures
@connects("embedder")
def embed(
    files: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, readable=True, help="Images, or .txt files.")
    ],
    model: Annotated[str | None, typer.Option("--model", "-m", help="Embedder model (default: its default).")] = None,
    json_output: JsonFlag = False,
    *,
    client: EmbedderClient,
) -> None:
    """Embed images or texts; print a summary table, or every vector with --json. Without
    --model, images go to the embedder's default image model and .txt files to its text model."""
    items = read_items(files)
    model = model or served_model(client, items.kind)
    vectors = client.embed(images=items.images, texts=items.texts, model=model)
    if json_output:
        output.print_json(
            {
                "model": model,
                "dimension": int(vectors.shape[1]),
                "items": [
                    {"file": str(f), "vector": v.astype(np.float64).tolist()}
                    for f, v in zip(files, vectors, strict=True)
                ],
            }
        )
        return
    rows = [
        (
            f.name,
            items.kind,
            len(v),
            float(np.linalg.norm(v)),
            " ".join(f"{x:.3f}" for x in v[:SHOWN_VALUES]) + " …",
        )
        for f, v in zip(files, vectors, strict=True)
    ]
    output.show(output.table(None, ("file", "kind", "dimension", "norm", "first values"), rows))


def served_model(client: EmbedderClient, kind: str) -> str:
    """The embedder's model for items of `kind` ("image" or "text"): its default model when it
    takes that kind, else the first that does."""
    fitting = sorted((not m.is_default, m.name) for m in client.models() if m.modality == kind)
    if not fitting:
        raise FailedPrecondition(
            f"the embedder serves no {kind} model; start one with "
            f"`oddity up --model NAME={'text:' if kind == 'text' else ''}PATH`, or name one with --model"
        )
    return fitting[0][1]
