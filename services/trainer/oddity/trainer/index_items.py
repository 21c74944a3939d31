"""A version's similarity index from a training run's rows: which columns become the items'
ids, metadata, tags, captions and shown texts (the `similarity:` section of dataset.yaml, checked against
the data before training starts), which vectors are indexed (image and text datasets: the
embeddings without the extra features; tables: the feature rows), and the embedder text
model whose vectors of the tags and captions make text search.

The items are the rows the model trains on, position by position: a row dropped for a bad
value is in neither.

Reason to change: what of a dataset's rows goes into its similarity index.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from oddity.common.bundle import index_contract as contract
from oddity.common.clients import EmbedderModel
from oddity.common.errors import FailedPrecondition, Unavailable
from oddity.trainer.data import DataError, Dataset
from oddity.trainer.embedding_cache import EmbeddingCache
from oddity.trainer.index_builder import BuiltIndex, IndexItems, IndexSettings, TextEmbedder, build_index, split_tags
from oddity.trainer.item_datasets import ItemEmbedder, embed_cached
from oddity.trainer.spec import DatasetSpec
from oddity.v1 import manifest_pb2

SHOWN = 5  # ids or columns named in a message


class IndexBuildFailed(Exception):
    """The similarity index of a trained version could not be built; nothing is published."""


class IndexEmbedder(ItemEmbedder, Protocol):
    """What text search needs of the embedder (see job_embedder.JobEmbedder)."""

    def models(self) -> list[EmbedderModel]:
        """Every model the embedder serves."""
        ...


@dataclass
class IndexPlan:
    """What the index of a run holds, ready to build once the model is trained."""

    items: IndexItems
    space: str
    settings: IndexSettings
    text_model_name: str  # the spec's similarity.text_model ("": the embedder's first text model)
    # Set by choose_text_model: the model that embeds tags and captions, or why there is none.
    text_model: EmbedderModel | None = None
    text_note: str = ""

    @property
    def has_texts(self) -> bool:
        """Tags or captions to search by text."""
        return self.items.tags is not None or self.items.captions is not None


@dataclass
class IndexOutcome:
    built: BuiltIndex
    text_note: str  # why the index has no text search, or ""

    def figures(self) -> dict[str, Any]:
        """The index as the history records it."""
        index = self.built.index
        figures: dict[str, Any] = {
            "space": index.space,
            "items": index.items,
            "dimension": index.dimension,
            "clusters": index.clusters,
            "unclustered": self.built.unclustered,
            "unclustered_share": round(self.built.unclustered / index.items, 4),
            "tags": index.tags,
            "search": "approximate" if index.approximate.file else "exact",
            "text_model": index.text_model.model,
        }
        if self.text_note:
            figures["text_search"] = self.text_note
        return figures


def plan_index(
    spec: DatasetSpec, data: Dataset, embedding: manifest_pb2.EmbeddingSource | None = None
) -> IndexPlan | None:
    """The index of `data`'s rows as the spec asks for it (None: no index). Raises DataError
    naming the column at fault, or the repeated ids."""
    if not spec.indexed:
        return None
    if data.item_ids is None or data.item_table is None:
        raise ValueError("the rows carry no items for the similarity index")
    section = spec.index
    columns = _Columns(data)
    named = {
        "similarity.id_column": section.id_column,
        "similarity.tags_column": section.tags_column,
        "similarity.caption_column": section.caption_column,
    }
    for key, column in named.items():
        if column:
            columns.check(key, column)
    for column in section.metadata or []:
        columns.check("similarity.metadata", column)

    if section.id_column:
        ids = _ids(columns, section.id_column, data.item_ids)
        _check_unique(ids, f"column {section.id_column!r}")
    else:
        # Indexing is on by default: a file listed twice (say at two ages) must not fail a run
        # that trained before, so default ids tell repeats apart instead.
        ids = _numbered_repeats(data.item_ids)
    metadata = {c: columns.values(c) for c in _metadata_columns(spec, data)}
    tags = [split_tags(v) for v in columns.values(section.tags_column)] if section.tags_column else None
    captions = (
        ["" if _missing(v) else str(v).strip() for v in columns.values(section.caption_column)]
        if section.caption_column
        else None
    )
    # A text dataset's texts, to show with the items (the index keeps their beginnings).
    texts = [str(v) for v in columns.values(spec.texts.text_column)] if spec.texts is not None else None
    if embedding is not None:  # the embeddings, without the extra features appended to them
        vectors, space = data.features[:, : embedding.dimension], contract.EMBEDDING_SPACE
    else:
        vectors, space = data.features, contract.FEATURES_SPACE
    settings = IndexSettings(
        approximate_from=section.approximate_from,
        min_cluster_size=section.min_cluster_size,
        cluster_reach=section.cluster_reach,
        min_cooccurrence=section.min_cooccurrence,
    )
    items = IndexItems(ids=ids, vectors=vectors, metadata=metadata, tags=tags, captions=captions, texts=texts)
    return IndexPlan(items=items, space=space, settings=settings, text_model_name=section.text_model)


def choose_text_model(plan: IndexPlan, embedder: IndexEmbedder) -> None:
    """The text model for the tags and captions, if there are any (before training, so a
    named model the embedder does not serve fails the job at once): the model the spec names,
    which must be a text model; else the embedder's first text model, or none (and why)."""
    if not plan.has_texts:
        return
    name = plan.text_model_name
    if name:
        try:
            model = embedder.model(name)
        except FailedPrecondition as exc:
            raise FailedPrecondition(f"similarity.text_model: {exc.message}") from exc
        if model.modality != "text":
            raise FailedPrecondition(f"similarity.text_model {name!r} embeds {model.modality}s, not texts")
        plan.text_model = model
        return
    try:
        served = embedder.models()
    except Unavailable as exc:
        plan.text_note = f"no text search: {exc.message}"
        return
    plan.text_model = next((m for m in served if m.modality == "text"), None)
    if plan.text_model is None:
        plan.text_note = "no text search: the embedder serves no text model"


def build(plan: IndexPlan, embedder: IndexEmbedder, cache: EmbeddingCache, batch_size: int) -> IndexOutcome:
    """Build the planned index; tags and captions are embedded by the plan's text model
    (through `embedder`, batched and cached like items). Raises IndexBuildFailed, or the
    embedder's error."""
    model, source, text_embedder = plan.text_model, None, None
    if model is not None:
        text_embedder = _text_embedder(embedder, model, cache, batch_size)
        source = manifest_pb2.EmbeddingSource(
            model=model.name,
            model_id=model.model_id,
            revision=model.revision,
            dimension=model.dimension,
            modality=model.modality,
        )
    try:
        built = build_index(
            plan.items, space=plan.space, settings=plan.settings, text_embedder=text_embedder, text_model=source
        )
    except (ValueError, ArithmeticError, MemoryError, RuntimeError) as exc:
        raise IndexBuildFailed(f"the similarity index could not be built: {type(exc).__name__}: {exc}") from exc
    note = plan.text_note
    if model is not None and not built.index.text_model.model:
        note = "no text search: every tag list and caption is empty"
    return IndexOutcome(built, note)


def _text_embedder(
    embedder: IndexEmbedder, model: EmbedderModel, cache: EmbeddingCache, batch_size: int
) -> TextEmbedder:
    def embed(texts: list[str]) -> np.ndarray:
        embedded = embed_cached(embedder, model, [t.encode() for t in texts], cache, batch_size)
        # A text the model refuses matches nothing (a zero vector), like a missing caption.
        zero = np.zeros(model.dimension, dtype=np.float32)
        return np.stack([zero if v is None else np.asarray(v, dtype=np.float32) for v in embedded.vectors])

    return embed


class _Columns:
    """The columns of the rows: the source's table, and a table's feature columns (kept as
    the training rows, not twice)."""

    def __init__(self, data: Dataset) -> None:
        assert data.item_table is not None
        self.table = data.item_table
        self.rows = data.features
        self.features = {name: j for j, name in enumerate(data.feature_names) if name not in self.table.columns}

    @property
    def names(self) -> list[str]:
        return [*map(str, self.table.columns), *self.features]

    def check(self, key: str, column: str) -> None:
        if column not in self.table.columns and column not in self.features:
            raise DataError(f"{key} {column!r} is not a column of the data; its columns are {self.names}")

    def values(self, column: str) -> list[Any]:
        if column in self.features:
            return self.rows[:, self.features[column]].astype(np.float64).tolist()
        return self.table[column].tolist()


def _ids(columns: _Columns, column: str, defaults: list[str]) -> list[str]:
    values = columns.values(column)
    empty = [defaults[i] for i, v in enumerate(values) if _missing(v) or not str(v).strip()]
    if empty:
        raise DataError(
            f"similarity.id_column {column!r} is empty for {len(empty)} items "
            f"(e.g. {', '.join(map(repr, empty[:SHOWN]))})"
        )
    return [_id_text(v) for v in values]


def _id_text(value: Any) -> str:
    """An id as written: 7, not 7.0, when a number column came back as floats."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _check_unique(ids: list[str], where: str) -> None:
    repeated = [(i, n) for i, n in Counter(ids).items() if n > 1]
    if repeated:
        shown = ", ".join(f"{i!r} ({n} times)" for i, n in repeated[:SHOWN])
        more = f" and {len(repeated) - SHOWN} more" if len(repeated) > SHOWN else ""
        raise DataError(f"similarity index: item ids ({where}) must be unique; repeated: {shown}{more}")


def _numbered_repeats(ids: list[str]) -> list[str]:
    """The ids, the second and later repeats of one numbered: a.png, a.png#2, a.png#3."""
    seen: Counter[str] = Counter()
    out = []
    for item in ids:
        seen[item] += 1
        out.append(item if seen[item] == 1 else f"{item}#{seen[item]}")
    return out


def _metadata_columns(spec: DatasetSpec, data: Dataset) -> list[str]:
    """The spec's metadata columns, or every column of the source but those that name the
    file, hold the text, id, tags or caption, or are a table's features."""
    section = spec.index
    if section.metadata is not None:
        return list(section.metadata)
    assert data.item_table is not None
    left_out = {c for c in (section.id_column, section.tags_column, section.caption_column) if c}
    if spec.images is not None and not spec.images.folder_column:
        left_out.add(spec.images.file_column)
    if spec.texts is not None:
        left_out.add(spec.texts.text_column)
    return [str(c) for c in data.item_table.columns if c not in left_out]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
