"""The model registry: which version of each model serves, and the swap.

The registry scans the read-only model repository (on a poll, and at once on LoadModel),
picks per model the newest complete version (or the pinned one), loads and warms it, then
swaps one reference. The version it replaces is retired: it takes no new requests and its
sessions are released when its last in-flight request returns. A version that fails its
checks or its load is remembered with the folder's signature, logged and counted once, and
tried again only when its files change; the serving version is never touched by a failure.
Each model's entry also lists its folders on disk, by the bundle reader's one view of
versions (`bundle.check_versions`, cached by folder signature): the complete ones it could
serve (`available`) and the ones refused, with the reason (`rejected`: incomplete or corrupt,
or complete but failing to load here).

Threads: scans, loads and unloads run on worker threads, one at a time (the scan lock);
requests and status calls run on the event loop. They share one thing, the `ModelTable`: an
immutable snapshot of every model's entry, replaced as a whole by one reference assignment
under the scan lock. A reader takes the reference once and sees one consistent table, however
many scans publish meanwhile. The rejections by folder signature are the scan's own and only
the scan lock's holder touches them.

Reason to change: which version serves, and how versions are swapped and retired.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from oddity.common import bundle
from oddity.common.errors import FailedPrecondition, NotFound, OddityError, StillLoading, shown
from oddity.common.logging import get_logger
from oddity.common.scoring import ModelLoadError
from oddity.detector.metrics import DetectorMetrics
from oddity.detector.model import LoadedModel
from oddity.v1 import manifest_pb2

log = get_logger("oddity.detector.registry")

Loader = Callable[[bundle.VerifiedVersion], LoadedModel]


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """What the registry knows of one model name, as of one table."""

    name: str
    serving: LoadedModel | None = None
    # Complete versions on disk this detector has not failed to load, ascending.
    available: tuple[int, ...] = ()
    # Version folders refused (incomplete, corrupt, or failing to load), with the reason.
    rejected: tuple[tuple[int, str], ...] = ()
    pinned: int | None = None
    unloaded: bool = False
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class ModelTable:
    """Every model's entry. Never changed in place: the registry publishes a new table."""

    models: Mapping[str, ModelEntry]
    # A whole scan of the repository has completed: before it, a model that is not serving may
    # just not have been found yet (UNAVAILABLE); after it, it does not exist (NOT_FOUND).
    scanned: bool = False
    # Some model serves: the detector's readiness.
    serving: bool = False


@dataclass(frozen=True, slots=True)
class ModelStatus:
    name: str
    serving_version: int
    available_versions: tuple[int, ...]
    rejected_versions: Mapping[int, str]
    pinned_version: int
    unloaded: bool
    kind: str
    last_error: str
    manifest: manifest_pb2.ModelManifest | None  # of the serving version


@dataclass(frozen=True, slots=True)
class _Rejection:
    signature: tuple
    reason: str


class _NotServable(Exception):
    """A version failed its checks or its load (already logged and counted)."""


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
        entries = {name: ModelEntry(name=name, pinned=version) for name, version in (pinned or {}).items()}
        # The one reference requests read; assigned only under the scan lock.
        self._table = ModelTable(MappingProxyType(entries))
        # Serializes scans, loads and unloads; requests never take it.
        self._scan_lock = threading.Lock()
        # Scan-private: versions refused, by model, with the folder signature they were refused for.
        self._rejected: dict[str, dict[int, _Rejection]] = {}
        self._draining: set[LoadedModel] = set()
        self._draining_lock = threading.Lock()

    # -- serving --------------------------------------------------------------------------

    @property
    def has_models(self) -> bool:
        """Some model serves (readiness)."""
        return self._table.serving

    @property
    def scanned(self) -> bool:
        """A whole scan of the repository has completed."""
        return self._table.scanned

    def acquire(self, name: str) -> LoadedModel:
        """The serving version of a model, leased: call release() on it when done."""
        while True:
            table = self._table
            entry = table.models.get(name)
            model = entry.serving if entry is not None else None
            if model is None:
                raise _missing(table, name, entry)
            if model.try_acquire():
                return model
            # Lost a race with a swap: the new version is in the next table.

    @contextmanager
    def lease(self, name: str) -> Iterator[LoadedModel]:
        model = self.acquire(name)
        try:
            yield model
        finally:
            model.release()

    # -- scanning -------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Scan the whole repository once; returns True when any serving version changed.

        A missing repository (a volume not mounted yet, or gone) is not scanned: what serves
        keeps serving, and until a first scan completes unknown models are UNAVAILABLE."""
        with self._scan_lock:
            if not self.repository.is_dir():
                return False
            names = set(bundle.list_models(self.repository))
            changed = False
            for name in sorted(names | set(self._table.models)):
                changed |= self._refresh_model(name, present=name in names)
            if not self._table.scanned:
                self._publish(self._table.models, scanned=True)
            return changed

    def load(self, name: str, version: int = 0) -> ModelStatus:
        """LoadModel: rescan one model now; version 0 serves the newest complete version and
        clears a pin, a positive version is loaded and pinned. A failure changes nothing but
        the model's last error."""
        with self._scan_lock:
            if not bundle.is_valid_model_name(name) or not (self.repository / name).is_dir():
                raise NotFound(f"model {shown(name)!r} not found in the model repository")
            entry = self._table.models.get(name) or ModelEntry(name=name)
            if not version:
                self._refresh_model(name, present=True, entry=replace(entry, pinned=None, unloaded=False))
                entry = self._table.models[name]
                if entry.serving is None:
                    reason = entry.last_error or "no complete version"
                    raise FailedPrecondition(f"model {name!r} has no servable version: {reason}")
                return _status(entry)
            version_dir = self.repository / name / str(version)
            if not version_dir.is_dir():
                raise NotFound(f"version {version} of model {name!r} not found")
            self._rejected.get(name, {}).pop(version, None)
            try:
                model = self._load_version(name, version, bundle.version_signature(version_dir))
            except _NotServable as exc:
                self._put(self._on_disk(replace(entry, last_error=str(exc))))
                raise FailedPrecondition(f"version {version} of model {name!r} cannot serve: {exc}") from None
            entry = self._on_disk(replace(entry, serving=model, pinned=version, unloaded=False, last_error=""))
            self._put(entry)
            return _status(entry)

    def unload(self, name: str) -> ModelStatus:
        """UnloadModel: stop serving a model until LoadModel serves it again."""
        with self._scan_lock:
            entry = self._table.models.get(name)
            if entry is None or (entry.serving is None and not entry.unloaded):
                raise NotFound(f"model {shown(name)!r} is not loaded")
            entry = replace(entry, serving=None, unloaded=True)
            self._put(entry)
            return _status(entry)

    def _refresh_model(self, name: str, *, present: bool, entry: ModelEntry | None = None) -> bool:
        """Bring one model's entry up to date with its folder; True when its serving version changed."""
        old = self._table.models.get(name)
        entry = entry or old or ModelEntry(name=name)
        if not present:
            # The model folder is gone: stop serving it (its versions were removed on purpose).
            self._rejected.pop(name, None)
            if entry.serving is not None:
                log.warning("model folder removed; unloading", model=name)
            if entry.pinned is None:
                if old is not None:
                    self._drop(name)
            elif entry != (kept := replace(entry, serving=None, available=(), rejected=())):
                self._put(kept)
            return entry.serving is not None
        model_dir = self.repository / name
        folders = bundle.list_versions(model_dir)
        rejected = self._rejected.setdefault(name, {})
        for removed in set(rejected).difference(folders):
            del rejected[removed]
        if not entry.unloaded:
            candidates = [entry.pinned] if entry.pinned else list(reversed(folders))
            for version in candidates:
                if entry.serving is not None and entry.serving.version == version:
                    break
                signature = bundle.version_signature(model_dir / str(version))
                rejection = rejected.get(version)
                if rejection is not None and rejection.signature == signature:
                    continue
                try:
                    model = self._load_version(name, version, signature)
                except _NotServable as exc:
                    entry = replace(entry, last_error=str(exc))
                    continue
                entry = replace(entry, serving=model, last_error="")
                break
        # After the load: the version just loaded already has its verdict (no second hash).
        checks = bundle.check_versions(self.repository, name)
        entry = _versions_on_disk(entry, checks, rejected)
        if entry != old:
            self._put(entry)
        return entry.serving is not (old.serving if old else None)

    def _on_disk(self, entry: ModelEntry) -> ModelEntry:
        checks = bundle.check_versions(self.repository, entry.name)
        return _versions_on_disk(entry, checks, self._rejected.get(entry.name, {}))

    def _load_version(self, name: str, version: int, signature: tuple) -> LoadedModel:
        """Verify, load and warm up one version; raises _NotServable (logged and counted)."""
        self._metrics.model_seen(name)
        start = time.perf_counter()
        try:
            verified = bundle.load_verified_version(self.repository, name, version)
        except bundle.BundleError as exc:
            raise self._reject(name, version, signature, "incomplete", str(exc)) from None
        except OSError as exc:
            raise self._reject(name, version, signature, "unreadable", f"{type(exc).__name__}: {exc}") from None
        try:
            model = self._loader(verified)
        except ModelLoadError as exc:
            raise self._reject(name, version, signature, "load_failed", str(exc)) from None
        except Exception as exc:  # a loader bug must not stop the scan of other models
            log.exception("unexpected load error", model=name, version=version)
            raise self._reject(name, version, signature, "load_failed", f"{type(exc).__name__}: {exc}") from None
        elapsed = time.perf_counter() - start
        self._metrics.loads.labels(name, "success").inc()
        self._metrics.load_seconds.labels(name).observe(elapsed)
        self._rejected.get(name, {}).pop(version, None)
        log.info("version loaded", model=name, version=version, load_ms=round(elapsed * 1000, 1))
        return model

    def _reject(self, name: str, version: int, signature: tuple, reason: str, message: str) -> _NotServable:
        self._rejected.setdefault(name, {})[version] = _Rejection(signature, message)
        self._metrics.rejected_versions.labels(name, reason).inc()
        if reason == "load_failed":
            self._metrics.loads.labels(name, "failed").inc()
        log.warning("version not served", model=name, version=version, reason=reason, error=message)
        return _NotServable(f"version {version}: {message}")

    # -- publishing (scan lock held) --------------------------------------------------------

    def _put(self, entry: ModelEntry) -> None:
        """Publish a table with this entry, then retire the version it no longer serves."""
        models = dict(self._table.models)
        old = models.get(entry.name)
        models[entry.name] = entry
        self._publish(models)
        self._swapped(entry.name, old.serving if old else None, entry.serving)

    def _drop(self, name: str) -> None:
        models = dict(self._table.models)
        old = models.pop(name, None)
        self._publish(models)
        self._swapped(name, old.serving if old else None, None)

    def _publish(self, models: Mapping[str, ModelEntry], *, scanned: bool | None = None) -> None:
        self._table = ModelTable(  # the swap itself: one reference assignment
            MappingProxyType(dict(models)),
            scanned=self._table.scanned if scanned is None else scanned,
            serving=any(e.serving is not None for e in models.values()),
        )

    def _swapped(self, name: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        if old is new:
            return
        self._metrics.serving_changed(name, new.manifest if new else None)
        if old is None:
            return
        if new is not None:
            self._metrics.swaps.labels(name).inc()
            log.info("version swapped", model=name, version=new.version, previous_version=old.version)
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
        table = self._table
        return [_status(table.models[name]) for name in sorted(table.models)]

    def status(self, name: str) -> ModelStatus:
        entry = self._table.models.get(name)
        if entry is None:
            raise NotFound(f"model {shown(name)!r} not found")
        return _status(entry)

    def close(self) -> None:
        """Retire every version (shutdown)."""
        with self._scan_lock:
            for entry in self._table.models.values():
                if entry.serving is not None:
                    self._put(replace(entry, serving=None))


def _missing(table: ModelTable, name: str, entry: ModelEntry | None) -> OddityError:
    """The error for a request to a model that does not serve."""
    if not table.scanned:
        return StillLoading(
            "the model repository has not been scanned yet (the detector is starting, or the repository is missing)"
        )
    if entry is None:
        return NotFound(f"model {shown(name)!r} not found")
    if entry.unloaded:
        return NotFound(f"model {name!r} is unloaded on this detector; LoadModel serves it again")
    reason = f": {entry.last_error}" if entry.last_error else ""
    return NotFound(f"model {name!r} has no servable version{reason}")


def _versions_on_disk(
    entry: ModelEntry, checks: list[bundle.VersionCheck], rejected: Mapping[int, _Rejection]
) -> ModelEntry:
    """The entry with `available` and `rejected` as on disk: the bundle's verdict on every
    folder, and this detector's own refusals (a load failure) of folders unchanged since."""
    available: list[int] = []
    refused: list[tuple[int, str]] = []
    for check in checks:
        own = rejected.get(check.version)
        if own is not None and own.signature == check.signature:
            refused.append((check.version, own.reason))
        elif not check.complete:
            refused.append((check.version, check.error))
        else:
            available.append(check.version)
    return replace(entry, available=tuple(available), rejected=tuple(refused))


def _status(entry: ModelEntry) -> ModelStatus:
    model = entry.serving
    return ModelStatus(
        name=entry.name,
        serving_version=model.version if model else 0,
        available_versions=entry.available,
        rejected_versions=dict(entry.rejected),
        pinned_version=entry.pinned or 0,
        unloaded=entry.unloaded,
        kind=model.kind if model else "",
        last_error=entry.last_error,
        manifest=model.manifest if model else None,
    )
