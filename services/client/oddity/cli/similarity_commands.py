"""The similarity commands: `similar` (items like one item, image, text or vector), `clusters`
(the groups of a model's items, and where new items go) and `tags` (tags to suggest for an item).

    oddity similar library --id img-17 -k 5 --exclude-self --where "age>=3" --where "subject=face,car"
    oddity similar library --text "puppy"
    oddity clusters library --assign-image new.png
    oddity tags library --image new.png --has dog

`--where` keeps items whose metadata matches: `COLUMN=VALUE[,VALUE...]` (any one of the
values), `COLUMN>=NUMBER`, `COLUMN<=NUMBER`; several combine with AND.

Reason to change: the similarity commands' behaviour.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from oddity.cli import output
from oddity.cli.connection import connects
from oddity.cli.exit_codes import reports_failures
from oddity.cli.options import JsonFlag
from oddity.client import ClusterAssignment, DetectorClient, Filter, Query, SimilarItem, SimilarResult

WHERE = re.compile(r"\s*(?P<column>[^=<>!]*?)\s*(?P<operator>>=|<=|==|=|!=|>|<)\s*(?P<value>.*?)\s*")
WHERE_SYNTAX = "give COLUMN=VALUE[,VALUE...], COLUMN>=NUMBER or COLUMN<=NUMBER"
SHOWN_REPRESENTATIVES = 5  # ids per cluster in the table (--json has them all)


def parse_where(text: str) -> Filter:
    """One `--where` as a Filter; bad syntax is a usage error that quotes it."""
    match = WHERE.fullmatch(text)
    if match is None or not match["column"]:
        raise typer.BadParameter(f"{text!r}: {WHERE_SYNTAX}", param_hint="--where")
    column, operator, value = match["column"], match["operator"], match["value"]
    if operator in ("=", "=="):
        values = [v.strip() for v in value.split(",")]
        if not all(values):
            raise typer.BadParameter(f"{text!r}: an empty value; {WHERE_SYNTAX}", param_hint="--where")
        return Filter.equals(column, *values)
    if operator in (">=", "<="):
        try:
            bound = float(value)
        except ValueError:
            bound = math.nan
        if not math.isfinite(bound):
            raise typer.BadParameter(f"{text!r}: {value!r} is not a number", param_hint="--where")
        return Filter.at_least(column, bound) if operator == ">=" else Filter.at_most(column, bound)
    raise typer.BadParameter(f"{text!r}: {operator} is not supported; {WHERE_SYNTAX}", param_hint="--where")


def parse_vector(text: str) -> list[float]:
    """'0.1,0.2,...' (commas and/or spaces) as numbers; anything else is a usage error."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise typer.BadParameter(
            f"give numbers separated by commas, e.g. 0.1,0.2,0.3; got {text!r}", param_hint="--vector"
        ) from None
    if not values:
        raise typer.BadParameter("the vector is empty", param_hint="--vector")
    return values


@dataclass(frozen=True)
class QueryOptions:
    """The one query a command was given."""

    query: Query
    kind: str  # "id", "image", "text" or "vector"


def one_query(
    item_id: str | None, image: Path | None, text: str | None, vector: str | None = None, *, vector_option: bool = True
) -> QueryOptions:
    given = {"id": item_id, "image": image, "text": text, "vector": vector}
    present = [kind for kind, value in given.items() if value is not None]
    names = "--id, --image, --text" + (" or --vector" if vector_option else "")
    if len(present) != 1:
        got = ", ".join(f"--{kind}" for kind in present) or "none"
        raise typer.BadParameter(f"give exactly one of {names} (got {got})", param_hint=names)
    kind = present[0]
    if kind == "id":
        return QueryOptions(Query.by_id(item_id or ""), kind)
    if kind == "image":
        return QueryOptions(Query.by_image(Path(str(image))), kind)
    if kind == "text":
        return QueryOptions(Query.by_text(text or ""), kind)
    return QueryOptions(Query.by_vector(parse_vector(vector or "")), kind)


ItemId = Annotated[str | None, typer.Option("--id", help="An indexed item, by its id.")]
ImageFile = Annotated[
    Path | None,
    typer.Option("--image", exists=True, dir_okay=False, readable=True, help="An image file, embedded by the model."),
]
QueryText = Annotated[str | None, typer.Option("--text", help="A text: matched against the items, tags and captions.")]


def _tags(tags: tuple[str, ...]) -> str | None:
    return ", ".join(tags) or None


def _show_similar(result: SimilarResult) -> None:
    metadata = result.metadata_columns()
    texts = ("text",) if result.has_texts else ()  # captions, or a text dataset's texts
    columns = ("rank", "id", "similarity", "cluster", "tags", *texts, *metadata)
    rows = [
        (
            rank,
            item.id,
            item.similarity,
            item.cluster,
            _tags(item.tags),
            *((item.text or None,) if texts else ()),
            *(item.metadata.get(c) for c in metadata),
        )
        for rank, item in enumerate(result.items, 1)
    ]
    search = "approximate index" if result.approximate else "exact search"
    output.show(output.table(f"{result.model} v{result.version} ({search})", columns, rows))
    if result.matched_tags:
        matched = ", ".join(f"{m.tag} ({m.similarity:.3f})" for m in result.matched_tags)
        output.out.print(f"matched tags: {matched}", soft_wrap=True)
    if not result.items:
        output.note("no item matches")


@reports_failures
@connects("detector")
def similar(
    model: Annotated[str, typer.Argument(help="Model whose version holds a similarity index.")],
    item_id: ItemId = None,
    image: ImageFile = None,
    text: QueryText = None,
    vector: Annotated[
        str | None, typer.Option("--vector", help='A vector in the index\'s space: "0.1,0.2,...".')
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=1000, help="Items to return.")] = 10,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            metavar="FILTER",
            help="Keep items whose metadata matches: COLUMN=VALUE[,VALUE...], COLUMN>=NUMBER or COLUMN<=NUMBER "
            "(repeat: all must hold).",
        ),
    ] = None,
    with_tag: Annotated[
        list[str] | None, typer.Option("--with-tag", help="Keep items carrying this tag (repeat: every one).")
    ] = None,
    exclude_self: Annotated[bool, typer.Option("--exclude-self", help="With --id: leave the item out.")] = False,
    json_output: JsonFlag = False,
    *,
    client: DetectorClient,
) -> None:
    """Items most similar to an item, an image, a text or a vector: similarity, cluster, tags, caption or
    text, metadata."""
    filters = [parse_where(w) for w in where or ()]
    chosen = one_query(item_id, image, text, vector)
    if exclude_self and chosen.kind != "id":
        raise typer.BadParameter("only an --id query has itself in the index", param_hint="--exclude-self")
    q = chosen.query
    result = client.similar(
        model,
        item_id=q.item_id,
        vector=q.vector,
        image=q.image,
        text=q.text,
        top_k=top_k,
        filters=filters,
        exclude_self=exclude_self,
        with_tags=with_tag or (),
    )
    if json_output:
        output.print_json(result.to_dict())
    else:
        _show_similar(result)


def _representatives(items: list[SimilarItem]) -> str:
    shown = ", ".join(item.id for item in items[:SHOWN_REPRESENTATIVES])
    return shown + (f" (+{len(items) - SHOWN_REPRESENTATIVES})" if len(items) > SHOWN_REPRESENTATIVES else "")


def _assignment_cell(assignment: ClusterAssignment) -> str | int | None:
    return "new" if assignment.is_new else assignment.cluster


@reports_failures
@connects("detector")
def clusters(
    model: Annotated[str, typer.Argument(help="Model whose version holds a similarity index.")],
    representatives: Annotated[
        int, typer.Option("--representatives", "-r", min=0, max=100, help="Central items shown per cluster.")
    ] = 5,
    assign_id: Annotated[
        list[str] | None, typer.Option("--assign-id", help="An indexed item to place in a cluster (repeat).")
    ] = None,
    assign_image: Annotated[
        list[Path] | None,
        typer.Option(
            "--assign-image",
            exists=True,
            dir_okay=False,
            readable=True,
            help="An image to place in a cluster (repeat).",
        ),
    ] = None,
    assign_text: Annotated[
        list[str] | None, typer.Option("--assign-text", help="A text to place in a cluster (repeat).")
    ] = None,
    json_output: JsonFlag = False,
    *,
    client: DetectorClient,
) -> None:
    """Clusters of the model's items, largest first: size, top tags, central items; and which
    cluster each --assign-* item joins (or "new" when none is close enough)."""
    labelled: list[tuple[str, Query]] = [
        *((f"id {i}", Query.by_id(i)) for i in assign_id or ()),
        *((str(f), Query.by_image(f)) for f in assign_image or ()),
        *((f"text {t!r}", Query.by_text(t)) for t in assign_text or ()),
    ]
    result = client.clusters(model, representatives=representatives, assign=[q for _, q in labelled])
    if json_output:
        document = result.to_dict()
        for entry, (label, _) in zip(document["assignments"], labelled, strict=True):
            entry["item"] = label
        output.print_json(document)
        return
    rows = [(c.id, c.size, _tags(c.top_tags), _representatives(c.representatives)) for c in result.clusters]
    title = f"{result.model} v{result.version}: {len(result.clusters)} clusters, {result.unclustered} items in none"
    output.show(output.table(title, ("cluster", "size", "top tags", "representatives"), rows))
    if labelled:
        assigned = [
            (label, _assignment_cell(a), a.similarity)
            for (label, _), a in zip(labelled, result.assignments, strict=True)
        ]
        output.show(output.table("assignments", ("item", "cluster", "similarity to centroid"), assigned))


@reports_failures
@connects("detector")
def tags(
    model: Annotated[str, typer.Argument(help="Model whose version holds a similarity index with tags.")],
    item_id: ItemId = None,
    image: ImageFile = None,
    text: QueryText = None,
    has: Annotated[
        list[str] | None, typer.Option("--has", help="A tag the item already has (repeat); never suggested.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=1000, help="Tags to suggest.")] = 5,
    neighbours: Annotated[
        int, typer.Option("--neighbours", min=1, max=1000, help="Nearest items whose tags vote.")
    ] = 10,
    json_output: JsonFlag = False,
    *,
    client: DetectorClient,
) -> None:
    """Tags to suggest for an item, an image or a text: from its neighbours' tags and from the
    tags that go with the ones it has."""
    q = one_query(item_id, image, text, vector_option=False).query
    result = client.suggest_tags(
        model,
        item_id=q.item_id,
        image=q.image,
        text=q.text,
        tags=has or (),
        top_k=top_k,
        neighbours=neighbours,
    )
    if json_output:
        output.print_json(result.to_dict())
        return
    rows = [(s.tag, s.score, s.from_neighbours, s.from_cooccurrence) for s in result.suggestions]
    columns = ("tag", "score", "from neighbours", "from co-occurrence")
    output.show(output.table(f"{result.model} v{result.version}", columns, rows))
    if not result.suggestions:
        output.note("no tag to suggest")
