"""The learner registry: which learner class serves which model kind. A kind joins by
addition: its class registers itself (`register_learner`), or a separate distribution names
it under the `oddity.learners` entry-point group (loaded once at start-up by
`load_entry_points`). The spec, the service and the pipeline ask the registry, never a table
of their own; `oddity.common.bundle.KINDS` remains the contract's table of the built-in kinds.

This module sits below every learner: the ensemble makes its members through it.

Reason to change: how kinds are found and made.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, TypeVar

from oddity.common.logging import get_logger
from oddity.trainer.learners.base import AnomalyLearner, ClassifierLearner, Learner

log = get_logger("oddity.trainer.learners")

ENTRY_POINT_GROUP = "oddity.learners"

L = TypeVar("L", bound=type[Learner])

_learners: dict[str, type[Learner]] = {}
_lock = threading.Lock()


def register_learner(cls: L) -> L:
    """Register a learner class under its `kind` (usable as a class decorator). A kind is
    served by one class: registering another class under a taken kind is refused."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} declares no kind")
    if not issubclass(cls, (AnomalyLearner, ClassifierLearner)):
        raise ValueError(f"{cls.__name__} is neither an AnomalyLearner nor a ClassifierLearner")
    with _lock:
        taken = _learners.get(cls.kind)
        if taken is not None and taken is not cls:
            raise ValueError(f"model kind {cls.kind!r} is served by {taken.__qualname__} already")
        _learners[cls.kind] = cls
    return cls


def unregister_learner(kind: str) -> None:
    """Forget a kind (tests that add one take it away again)."""
    with _lock:
        _learners.pop(kind, None)


def load_entry_points() -> list[str]:
    """Register the learner classes other distributions declare under `oddity.learners`
    (name = kind, value = "package.module:Class"); returns the kinds added. A plug-in that
    fails to load is logged and left out: the built-in kinds keep working."""
    added = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = point.load()
            if getattr(cls, "kind", None) != point.name:
                raise ValueError(f"entry point {point.name!r} loads a class of kind {getattr(cls, 'kind', None)!r}")
            register_learner(cls)
        except Exception as exc:
            log.error("learner plug-in not loaded", entry_point=point.name, error=f"{type(exc).__name__}: {exc}")
            continue
        added.append(point.name)
    return added


def kinds() -> list[str]:
    """Every registered kind, sorted."""
    return sorted(_learners)


def learners() -> dict[str, type[Learner]]:
    """kind -> learner class, a copy."""
    return dict(_learners)


def learner_class(kind: str) -> type[Learner]:
    try:
        return _learners[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {kinds()}") from None


def make_learner(kind: str, params: Mapping[str, Any]) -> Learner:
    return learner_class(kind)(**params)


def make_anomaly_learner(kind: str, params: Mapping[str, Any]) -> AnomalyLearner:
    learner = make_learner(kind, params)
    if not isinstance(learner, AnomalyLearner):
        raise ValueError(f"model kind {kind!r} is not an anomaly detector")
    return learner


def make_classifier(kind: str, params: Mapping[str, Any]) -> ClassifierLearner:
    learner = make_learner(kind, params)
    if not isinstance(learner, ClassifierLearner):
        raise ValueError(f"model kind {kind!r} is not a classifier")
    return learner
