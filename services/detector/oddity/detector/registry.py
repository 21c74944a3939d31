"""The model registry: which version of each model serves, and the swap.

The registry scans the read-only model repository (on a poll, and at once on LoadModel),
picks per model the newest complete version (or the pinned one), loads and warms it, then
swaps one reference. The version it replaces is retired: it takes no new requests and its
sessions are released when its last in-flight request returns. A version that fails its
checks or its load is remembered with the folder's signature, logged and counted once, and
tried again only when its files change; the serving version is never touched by a failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from oddity.common import bundle
from oddity.common.errors import FailedPrecondition, NotFound, Unavailable
from oddity.common.logging import get_logger
from oddity.detector.metrics import DetectorMetrics
from oddity.detector.model import LoadedModel
from oddity.detector.sessions import ModelLoadError

log = get_logger("oddity.detector.registry")

Loader = Callable[[bundle.VerifiedVersion], LoadedModel]


@dataclass
class _Rejection:
    signature: tuple
    reason: str


@dataclass
class ModelState:
    """What the registry knows of one model name."""

    name: str
    serving: LoadedModel | None = None
    available: list[int] = field(default_factory=list)
    pinned: int | None = None
    unloaded: bool = False
    last_error: str = ""
    rejected: dict[int, _Rejection] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelStatus:
    name: str
    serving_version: int
    available_versions: tuple[int, ...]
    pinned_version: int
    unloaded: bool
    kind: str
    last_error: str
    manifest: object | None  # manifest_pb2.ModelManifest of the serving version


class ModelRegistry:
    def __init__(
        self,
        repository: Path,
        loader: Loader,
        metrics: DetectorMetrics,
        *,
        pinned: Mapping[str, int] | None = None,
    ) -> None:
        self.repository = repository
        self._loader = loader
        self._metrics = metrics
        self._models: dict[str, ModelState] = {}
        for name, version in (pinned or {}).items():
            self._models[name] = ModelState(name=name, pinned=version)
        # Serializes scans and loads; requests never take it.
        self._scan_lock = threading.Lock()
        self._draining: set[LoadedModel] = set()
        self._draining_lock = threading.Lock()

    # -- serving --------------------------------------------------------------------------

    @property
    def has_models(self) -> bool:
        return any(s.serving is not None for s in self._models.values())

    def acquire(self, name: str) -> LoadedModel:
        """The serving version of a model, leased: call release() on it when done."""
        while True:
            state = self._models.get(name)
            model = state.serving if state is not None else None
            if model is None:
                if not self.has_models:
                    raise Unavailable(
                        "no model is loaded yet; the detector is still starting or the repository is empty"
                    )
                if state is not None and state.unloaded:
                    raise NotFound(f"model {name!r} is unloaded on this detector; LoadModel serves it again")
                raise NotFound(f"model {name!r} not found")
            if model.try_acquire():
                return model
            # Lost a race with a swap: the new version is in place now.

    @contextmanager
    def lease(self, name: str) -> Iterator[LoadedModel]:
        model = self.acquire(name)
        try:
            yield model
        finally:
            model.release()

    # -- scanning -------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Scan the whole repository once; returns True when any serving version changed."""
        with self._scan_lock:
            names = set(bundle.list_models(self.repository))
            changed = False
            for name in sorted(names | set(self._models)):
                changed |= self._refresh_model(name, present=name in names)
            return changed

    def load(self, name: str, version: int = 0) -> ModelStatus:
        """LoadModel: rescan one model now; version 0 serves the newest complete version and
        clears a pin, a positive version is loaded and pinned."""
        with self._scan_lock:
            if not bundle.is_valid_model_name(name) or not (self.repository / name).is_dir():
                raise NotFound(f"model {name!r} not found in the model repository")
            state = self._models.setdefault(name, ModelState(name=name))
            state.unloaded = False
            if version:
                if not (self.repository / name / str(version)).is_dir():
                    raise NotFound(f"version {version} of model {name!r} not found")
                state.rejected.pop(version, None)
                model = self._try_load(state, version, bundle.version_signature(self.repository / name / str(version)))
                if model is None:
                    raise FailedPrecondition(f"version {version} of model {name!r} cannot serve: {state.last_error}")
                state.pinned = version
                self._swap(state, model)
            else:
                state.pinned = None
                self._refresh_model(name, present=True)
                if state.serving is None:
                    reason = state.last_error or "no complete version"
                    raise FailedPrecondition(f"model {name!r} has no servable version: {reason}")
            return self._status(state)

    def unload(self, name: str) -> ModelStatus:
        with self._scan_lock:
            state = self._models.get(name)
            if state is None or (state.serving is None and not state.unloaded):
                raise NotFound(f"model {name!r} is not loaded")
            state.unloaded = True
            self._swap(state, None)
            return self._status(state)

    def _refresh_model(self, name: str, *, present: bool) -> bool:
        state = self._models.setdefault(name, ModelState(name=name))
        if not present:
            # The model folder is gone: stop serving it (its versions were removed on purpose).
            if state.serving is not None:
                log.warning("model folder removed; unloading", model=name)
                self._swap(state, None)
                return True
            if state.pinned is None:
                del self._models[name]
            return False
        model_dir = self.repository / name
        state.available = bundle.list_versions(model_dir)
        for gone in set(state.rejected) - set(state.available):
            del state.rejected[gone]
        if state.unloaded:
            return False
        candidates = [state.pinned] if state.pinned else list(reversed(state.available))
        for version in candidates:
            if state.serving is not None and state.serving.version == version:
                return False
            signature = bundle.version_signature(model_dir / str(version))
            rejection = state.rejected.get(version)
            if rejection is not None and rejection.signature == signature:
                continue
            model = self._try_load(state, version, signature)
            if model is not None:
                self._swap(state, model)
                return True
        return False

    def _try_load(self, state: ModelState, version: int, signature: tuple) -> LoadedModel | None:
        name = state.name
        start = time.perf_counter()
        try:
            verified = bundle.load_verified_version(self.repository, name, version)
        except bundle.BundleError as exc:
            self._reject(state, version, signature, "incomplete", str(exc))
            return None
        except OSError as exc:
            self._reject(state, version, signature, "unreadable", f"{type(exc).__name__}: {exc}")
            return None
        try:
            model = self._loader(verified)
        except ModelLoadError as exc:
            self._reject(state, version, signature, "load_failed", str(exc))
            return None
        except Exception as exc:  # a loader bug must not stop the scan of other models
            log.exception("unexpected load error", model=name, version=version)
            self._reject(state, version, signature, "load_failed", f"{type(exc).__name__}: {exc}")
            return None
        elapsed = time.perf_counter() - start
        self._metrics.loads.labels(name, "success").inc()
        self._metrics.load_seconds.labels(name).observe(elapsed)
        state.rejected.pop(version, None)
        state.last_error = ""
        log.info("version loaded", model=name, version=version, load_ms=round(elapsed * 1000, 1))
        return model

    def _reject(self, state: ModelState, version: int, signature: tuple, reason: str, message: str) -> None:
        state.rejected[version] = _Rejection(signature, message)
        state.last_error = f"version {version}: {message}"
        self._metrics.rejected_versions.labels(state.name, reason).inc()
        if reason == "load_failed":
            self._metrics.loads.labels(state.name, "failed").inc()
        log.warning("version not served", model=state.name, version=version, reason=reason, error=message)

    def _swap(self, state: ModelState, model: LoadedModel | None) -> None:
        old = state.serving
        state.serving = model  # the one reference requests read: the swap itself
        self._metrics.serving_version.labels(state.name).set(model.version if model else 0)
        if old is None:
            return
        if model is not None:
            self._metrics.swaps.labels(state.name).inc()
            log.info("version swapped", model=state.name, version=model.version, previous_version=old.version)
        self._retire(old)

    def _retire(self, model: LoadedModel) -> None:
        with self._draining_lock:
            self._draining.add(model)
        model.retire()
        self._prune_draining()

    def _prune_draining(self) -> None:
        with self._draining_lock:
            self._draining = {m for m in self._draining if not m.released}
            self._metrics.draining_versions.set(len(self._draining))

    def draining(self) -> int:
        self._prune_draining()
        return len(self._draining)

    # -- status ---------------------------------------------------------------------------

    def statuses(self) -> list[ModelStatus]:
        return [self._status(s) for _, s in sorted(self._models.items())]

    def status(self, name: str) -> ModelStatus:
        state = self._models.get(name)
        if state is None:
            raise NotFound(f"model {name!r} not found")
        return self._status(state)

    def _status(self, state: ModelState) -> ModelStatus:
        model = state.serving
        return ModelStatus(
            name=state.name,
            serving_version=model.version if model else 0,
            available_versions=tuple(state.available),
            pinned_version=state.pinned or 0,
            unloaded=state.unloaded,
            kind=model.kind if model else "",
            last_error=state.last_error,
            manifest=model.manifest if model else None,
        )

    def close(self) -> None:
        """Retire every version (shutdown)."""
        with self._scan_lock:
            for state in self._models.values():
                if state.serving is not None:
                    self._swap(state, None)
