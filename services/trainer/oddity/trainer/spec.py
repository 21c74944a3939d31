"""Dataset specs: the `dataset.yaml` in each dataset folder of the data volume.

A bad spec marks only its own dataset invalid (with the message in GetStatus); the others
keep working. An unknown key is named with the closest allowed one and every key allowed
where it stands, e.g. "treshold_percentile: unknown key, did you mean 'threshold_percentile'?
(allowed keys: contamination, embedder, ...)". See docs/datasets.md for the full reference
with an example per model kind.

Reason to change: what a dataset.yaml may say.
"""

from __future__ import annotations

import difflib
import itertools
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from oddity.common.bundle import is_valid_model_name
from oddity.trainer.learners import learner_class, learners

SPEC_FILE = "dataset.yaml"


class SpecError(Exception):
    """dataset.yaml is missing, unreadable or invalid."""


class SpecMissing(SpecError):
    """No dataset.yaml yet: files often arrive before their spec."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _inside_folder(value: str | None) -> str | None:
    """Every path of a spec is relative and stays inside the dataset folder (links are checked
    where the files are read: data.inside)."""
    if value is not None and (Path(value).is_absolute() or ".." in Path(value).parts):
        raise ValueError(f"path {value!r} must stay inside the dataset folder (relative, without '..')")
    return value


class Source(_Strict):
    """Files to read, relative to the dataset folder (glob patterns allowed)."""

    path: str
    format: Literal["csv", "xlsx", "xls", "parquet", "jsonl"] | None = None

    _path_inside = field_validator("path")(_inside_folder)


class FeatureSelection(_Strict):
    """Either an explicit column list, or every numeric column minus the excluded ones."""

    columns: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


class Routing(_Strict):
    """Train one model per group of a numeric column, e.g. age bounds [3, 6, 9, 12] ->
    groups 3-6, 6-9, 9-12 (the last one closed above), plus `all` when all_group is set."""

    key: str
    bounds: list[float] = Field(min_length=2)
    all_group: bool = True

    @field_validator("bounds")
    @classmethod
    def _rising(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("routing bounds must rise strictly")
        return value


class ImageSource(_Strict):
    """Images to embed: a folder, with a metadata CSV (file name + extra columns such as age)
    or one subfolder per group whose name is the value of `folder_column`."""

    path: str = "images"
    metadata: str | None = "metadata.csv"
    file_column: str = "file_name"
    folder_column: str | None = None

    _paths_inside = field_validator("path", "metadata")(_inside_folder)

    @model_validator(mode="after")
    def _one_way(self) -> ImageSource:
        if self.folder_column:
            self.metadata = None
        return self


class TextSource(_Strict):
    """Texts to embed: a CSV with one text per row (plus extra columns)."""

    path: str
    text_column: str = "text"

    _path_inside = field_validator("path")(_inside_folder)


class EmbedderSpec(_Strict):
    """Which embedder model turns the items into vectors."""

    model: str = "vit"
    batch_size: int = Field(default=32, ge=1, le=1024)


class SimilaritySpec(_Strict):
    """The version's similarity index over the items (search, clusters, tags); see
    docs/datasets.md. Columns left unset take the defaults the dataset kind implies."""

    enabled: bool = True
    # Item ids: images default to the file column's value (or the path under the images
    # folder), texts and tables to the row's number.
    id_column: str | None = None
    # Columns kept beside the vectors; default: every column but the file, text, tags,
    # caption and id columns and the features of a table.
    metadata: list[str] | None = None
    tags_column: str | None = None  # comma- or semicolon-separated tags
    caption_column: str | None = None
    # Embedder model for text search over tags and captions; "": the embedder's first text model.
    text_model: str = ""
    approximate_from: int = Field(default=5_000, ge=1)
    min_cluster_size: int = Field(default=0, ge=0)  # 0: max(5, 2% of the items)
    # An item is in no group beyond median + cluster_reach robust deviations of its nearest
    # group's distances to its centroid; larger: fewer items in no group.
    cluster_reach: float = Field(default=5.0, ge=0)
    min_cooccurrence: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _distinct(self) -> SimilaritySpec:
        named = [c for c in (self.id_column, self.tags_column, self.caption_column) if c]
        if len(set(named)) != len(named):
            raise ValueError("id_column, tags_column and caption_column must be different columns")
        return self


class ModelSpec(_Strict):
    kind: str = "auto"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _known(cls, value: str) -> str:
        learner_class(value)  # ValueError names the registered kinds
        return value

    @model_validator(mode="after")
    def _known_params(self) -> ModelSpec:
        """Unknown or malformed parameters are a spec error now, not a failed training later
        (checked against the kind's declared parameters: no learner is built)."""
        learner_class(self.kind).check_params(self.params)
        return self


DEFAULT_DEBOUNCE_SECONDS = 5.0
READY_MARKER = "_READY"


class Retrain(_Strict):
    """When to retrain: on data changes (once the files have settled), every N hours, or only
    when asked."""

    policy: Literal["on_change", "interval", "manual"] = "on_change"
    # Files must be quiet this long (and unchanged across two looks) before automatic training.
    debounce_seconds: float = Field(default=DEFAULT_DEBOUNCE_SECONDS, ge=0)
    interval_hours: float = Field(default=24.0, gt=0)
    # After a Rollback: retrain once the data changes ("retrain"), or wait for Train ("hold").
    after_rollback: Literal["retrain", "hold"] = "retrain"
    # Producers that hand off explicitly: train only once a `_READY` file at least as new as
    # every data file is in the dataset folder.
    ready_marker: bool = False


class Validation(_Strict):
    """The gate a new model must pass before it is published."""

    # Anomaly rate on held-out normal rows (not used to set the threshold) must lie in here.
    anomaly_rate: tuple[float, float] = (0.01, 0.10)
    # Held-out share of the rows (half calibrates thresholds, half tests them).
    holdout_fraction: float = Field(default=0.2, gt=0.05, lt=0.5)
    # ONNX Runtime vs the framework model, max abs difference of scores/probabilities.
    parity_tolerance: float = Field(default=1e-3, gt=0)
    # More malformed rows than this share fails the run instead of dropping them.
    max_bad_row_fraction: float = Field(default=0.1, ge=0, le=1)
    # Allowed loss against the live version on the same held-out rows (anomaly rate for
    # detectors, balanced accuracy for classifiers).
    regression_tolerance: float = Field(default=0.05, ge=0)

    @field_validator("anomaly_rate")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 1.0:
            raise ValueError("anomaly_rate must be [low, high] with 0 <= low < high <= 1")
        return value


# Rows each group trains on at most: a uniform sample of the rows read. The kNN reference is at
# most 20,000 rows anyway; on the largest development sets (57k and 27k training rows) the
# default's held-out AUC at 25k-50k rows was within the sets' own noise of all rows, while the
# default's training time grows with rows x reference rows.
DEFAULT_MAX_ROWS = 50_000


class Training(_Strict):
    """What one training job may take: rows per group (a uniform sample of all rows read) and
    wall time."""

    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=100)
    # A job still training after this long fails with a message that says so; nothing is published.
    time_budget_seconds: float = Field(default=3600.0, gt=0)


class DatasetSpec(_Strict):
    """One dataset folder's spec."""

    name: str = ""  # model name; defaults to the folder name
    sources: list[Source] = Field(default_factory=list)
    # Image or text datasets: items are embedded by the embedder, then the extra numeric
    # columns (e.g. age) are appended to each vector.
    images: ImageSource | None = None
    texts: TextSource | None = None
    embedder: EmbedderSpec = Field(default_factory=EmbedderSpec)
    extra_features: list[str] = Field(default_factory=list)
    features: list[str] | FeatureSelection = Field(default_factory=FeatureSelection)
    label: str | None = None
    # Classifiers with a regression head (mlp_classifier): a numeric column predicted next to
    # the class, e.g. a continuous quality score beside its grade.
    score_column: str | None = None
    routing: Routing | None = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    min_samples: int = Field(40, ge=1)
    threshold_percentile: float = Field(95.0, gt=0, lt=100)
    # Share of the training rows expected to be anomalies (nobody cleans an export before
    # dropping it): kinds that trim their training rows (auto) leave out at least this share.
    # The threshold stays the percentile over every row: taken among the others, it flagged 8.5%
    # of new normal rows (at p95) on development sets with 5% anomalous training rows.
    contamination: float = Field(0.0, ge=0, le=0.3)
    retrain: Retrain = Field(default_factory=Retrain)
    validation: Validation = Field(default_factory=Validation)
    training: Training = Field(default_factory=Training)
    keep_versions: int = Field(5, ge=1)
    # Image and text datasets are indexed unless `enabled: false`; tables when the section is there.
    similarity: SimilaritySpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        kinds = [k for k, v in (("sources", self.sources), ("images", self.images), ("texts", self.texts)) if v]
        if len(kinds) != 1:
            raise ValueError("give exactly one of sources (tables), images or texts")
        kind = learner_class(self.model.kind)
        classifier = kind.is_classifier_kind()
        if classifier and not self.label:
            raise ValueError(f"model kind {self.model.kind!r} is a classifier and needs a label column")
        if not classifier and self.label:
            raise ValueError(
                f"model kind {self.model.kind!r} is an anomaly detector; remove label or pick a classifier"
            )
        if classifier and self.routing is not None:
            raise ValueError("classifiers are trained on one group; remove routing")
        if self.score_column and not kind.score_head:
            heads = sorted(k for k, v in learners().items() if v.score_head)
            raise ValueError(
                f"score_column needs a model kind with a regression head ({', '.join(heads)}), not {self.model.kind!r}"
            )
        if self.score_column and self.score_column == self.label:
            raise ValueError("score_column and label must be different columns")
        if self.name and not is_valid_model_name(self.name):
            raise ValueError(f"name {self.name!r} may only use letters, digits, '.', '_' and '-'")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.images is not None or self.texts is not None

    @property
    def indexed(self) -> bool:
        """Whether a version carries a similarity index of the items."""
        if self.similarity is None:
            return self.is_embedded
        return self.similarity.enabled

    @property
    def index(self) -> SimilaritySpec:
        """The similarity section, or its defaults."""
        return self.similarity if self.similarity is not None else SimilaritySpec()

    @property
    def is_classifier(self) -> bool:
        return learner_class(self.model.kind).is_classifier_kind()

    @property
    def selection(self) -> FeatureSelection:
        if isinstance(self.features, list):
            return FeatureSelection(columns=self.features)
        return self.features


def load_spec(folder: Path) -> DatasetSpec:
    """Read and validate `<folder>/dataset.yaml`; SpecError names the problem."""
    path = folder / SPEC_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SpecMissing(f"{SPEC_FILE} missing") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(f"{SPEC_FILE} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecError(f"{SPEC_FILE} must be a mapping")
    try:
        spec = DatasetSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise SpecError(f"{SPEC_FILE}: {problems}") from exc
    if not spec.name:
        if not is_valid_model_name(folder.name):
            raise SpecError(f"folder name {folder.name!r} is not a valid model name; set `name`")
        spec.name = folder.name
    return spec


# The spec's sections by class name: pydantic names the union member in an error's location
# (`features.FeatureSelection.colums`).
_SECTIONS: dict[str, type[BaseModel]] = {model.__name__: model for model in _Strict.__subclasses__()}


def _problem(error: ErrorDetails) -> str:
    """One validation error as "where: what"; an unknown key with the keys allowed there."""
    if error["type"] != "extra_forbidden":
        return f"{'.'.join(str(p) for p in error['loc']) or 'spec'}: {error['msg']}"
    *section, key = error["loc"]
    allowed = _keys_at(section)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    guess = f", did you mean {close[0]!r}?" if close else ""
    where = [str(p) for p in section if p not in _SECTIONS]
    named = [p for p in section if isinstance(p, str) and p not in _SECTIONS]
    here = f" in {'.'.join(named)}" if named else ""
    return f"{'.'.join([*where, str(key)])}: unknown key{guess} (allowed keys{here}: {', '.join(allowed)})"


def _keys_at(section: list[int | str]) -> list[str]:
    """The keys allowed in the section an error's location leads to."""
    models: list[type[BaseModel]] = [DatasetSpec]
    for part in section:
        if isinstance(part, int):
            continue  # an item of a list: the list's section
        if part in _SECTIONS:
            models = [_SECTIONS[part]]
            continue
        fields = [model.model_fields[part] for model in models if part in model.model_fields]
        models = [model for field in fields for model in _models_in(field.annotation)]
    return sorted({key for model in models for key in model.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The spec sections a field's type holds: `Routing | None` -> [Routing]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for argument in typing.get_args(annotation) for model in _models_in(argument)]
