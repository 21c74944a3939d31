"""The datasets: which datasets the data volume holds, their specs or the errors that
make them invalid, their content fingerprints, and which of them changed since the live
version of their model was trained.

`refresh()` rereads the data volume (specs and fingerprints; it reads files, so call it off
the event loop) and replaces the entries; everything else reads those entries. Hidden folders
(`.oddity`, where the trainer keeps its state, among them) are never datasets. A file that is
in two dataset folders at once (hard links) and a model name that two specs give belong to
one folder; the other is invalid.

Reason to change: how datasets are found and described (folders, specs, fingerprints).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from oddity.common import bundle
from oddity.common.errors import InvalidArgument, NotFound, shown
from oddity.common.logging import get_logger
from oddity.trainer.data import FileDigests, FileIdentity, fingerprint
from oddity.trainer.metrics import TrainerMetrics
from oddity.trainer.spec import DatasetSpec, SpecError, SpecMissing, load_spec
from oddity.v1 import manifest_pb2

log = get_logger("oddity.trainer.datasets")


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset folder as last read."""

    name: str
    folder: Path
    spec: DatasetSpec | None = None  # None: the spec is invalid (see error)
    error: str = ""
    fingerprint: str = ""

    @property
    def model(self) -> str:
        return self.spec.name if self.spec is not None else self.name


class Datasets:
    """The datasets under the data volume's datasets folder, as last read."""

    def __init__(self, root: Path, repository: Path, metrics: TrainerMetrics) -> None:
        self.root = root
        self.repository = repository
        self.metrics = metrics
        self._entries: dict[str, DatasetEntry] = {}
        self._owners: dict[str, str] = {}  # model name -> the dataset folder that has it
        self._file_owners: dict[FileIdentity, str] = {}  # a file in several folders -> the one that has it
        self.digests = FileDigests()  # scans rehash only the files that changed
        self._lock = threading.Lock()

    def refresh(self) -> set[str]:
        """Reread every dataset folder; returns the names of the valid datasets whose data
        changed since their model's live version was trained (by content fingerprint)."""
        with self._lock:
            names = (
                sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
                if self.root.is_dir()
                else []
            )
            entries = self._unique_models(
                self._unique_files({name: self._read(name, self._entries.get(name)) for name in names})
            )
            changed = set()
            for name, entry in entries.items():
                if entry.spec is None:
                    continue
                # The live manifest is read here anyway: its metrics follow every scan (and so
                # a restart, a rollback, a threshold move or a removed version).
                live = self.live_manifest(entry.spec.name)
                self.metrics.live(name, live, model=entry.spec.name)
                if not entry.error and entry.fingerprint != (live.data_fingerprint if live is not None else ""):
                    changed.add(name)
            self._entries = entries
            self.metrics.keep_live({e.name: e.spec.name if e.spec is not None else None for e in entries.values()})
            self.metrics.invalid_datasets.set(sum(1 for e in entries.values() if e.error))
            return changed

    def _unique_files(self, read: dict[str, tuple[DatasetEntry, dict[FileIdentity, Path]]]) -> dict[str, DatasetEntry]:
        """One dataset folder per data file: a source file with hard links in several folders
        (one file, several names) belongs to the folder that had it first (the one this process
        saw first with it, else the oldest folder); the others are invalid, naming the file and
        the folder that has it. So a link never hands one dataset another's data. Only files
        with more than one name are compared, from the stat the fingerprint takes anyway."""
        entries = {name: entry for name, (entry, _) in read.items()}
        holders: dict[FileIdentity, dict[str, Path]] = {}
        for name, (_, hard_links) in read.items():
            for identity, path in hard_links.items():
                holders.setdefault(identity, {})[name] = path
        owners: dict[FileIdentity, str] = {}
        for identity, names in holders.items():
            if len(names) < 2:
                continue
            known = self._file_owners.get(identity)
            owner = known if known in names else min(names, key=self._age)
            owners[identity] = owner
            theirs = names[owner].relative_to(self.root / owner)
            for name, path in names.items():
                entry = entries[name]
                if name == owner or entry.spec is None:
                    continue
                error = (
                    f"{name}/{path.relative_to(self.root / name)} is a hard link to {owner}/{theirs}, a file of "
                    f"the dataset folder {owner!r}; a dataset folder reads only its own files: copy the file "
                    f"into {name!r} instead of linking it"
                )
                if self._entries.get(name, entry).error != error:
                    log.warning("data file linked from another dataset", dataset=name, owner=owner, file=str(path))
                entries[name] = DatasetEntry(name, entry.folder, error=error)
        self._file_owners = owners
        return entries

    def _unique_models(self, entries: dict[str, DatasetEntry]) -> dict[str, DatasetEntry]:
        """One dataset folder per model name: when several specs name the same model, the folder
        that had it first keeps it (the one this process saw first, else the one the live
        version was trained from, else the oldest folder) and the others are invalid, saying
        which folder has the name. So two folders never publish over each other."""
        claims: dict[str, list[str]] = {}
        for name, entry in entries.items():
            if entry.spec is not None:
                claims.setdefault(entry.spec.name, []).append(name)
        for model, folders in claims.items():
            if len(folders) < 2:
                self._owners[model] = folders[0]
                continue
            owner = self._owner(model, folders)
            self._owners[model] = owner
            for name in folders:
                if name == owner:
                    continue
                entry = entries[name]
                error = (
                    f"model name {model!r} is already used by the dataset folder {owner!r}; "
                    f"give {name}/dataset.yaml another name"
                )
                if self._entries.get(name, entry).error != error:
                    log.warning("duplicate model name", dataset=name, model=model, owner=owner)
                entries[name] = DatasetEntry(name, entry.folder, error=error)
        return entries

    def _owner(self, model: str, folders: list[str]) -> str:
        known = self._owners.get(model)
        if known in folders:
            return known
        live = self.live_manifest(model)
        if live is not None and live.dataset in folders:
            return live.dataset
        return min(folders, key=self._age)

    def _age(self, name: str) -> tuple[float, str]:
        """A dataset folder's place in time, oldest first (its ctime, then its name)."""
        try:
            return (self.root.joinpath(name).stat().st_ctime, name)
        except OSError:
            return (float("inf"), name)

    def _read(self, name: str, previous: DatasetEntry | None) -> tuple[DatasetEntry, dict[FileIdentity, Path]]:
        """The folder's entry, and its source files that have other names (hard links)."""
        folder = self.root / name
        try:
            spec = load_spec(folder)
        except SpecError as exc:
            if previous is None or previous.error != str(exc):
                if isinstance(exc, SpecMissing):  # data often lands before its spec: not a warning
                    log.info("dataset folder has no spec yet", dataset=name)
                else:
                    log.warning("invalid dataset spec", dataset=name, error=str(exc))
            return DatasetEntry(name, folder, error=str(exc)), {}
        hard_links: dict[FileIdentity, Path] = {}
        try:
            digest = fingerprint(folder, spec, self.digests, hard_links)
        except OSError as exc:
            return DatasetEntry(name, folder, spec, error=f"cannot read the data: {exc}"), {}
        return DatasetEntry(name, folder, spec, fingerprint=digest), hard_links

    def live_manifest(self, model: str) -> manifest_pb2.ModelManifest | None:
        """The manifest of the live version (the newest complete one), if any (completeness
        verdicts are cached by folder signature, so frequent scans stay cheap)."""
        for version in reversed(bundle.complete_versions(self.repository, model)):
            try:
                return bundle.read_manifest(self.repository / model / str(version))
            except bundle.BundleError:  # changed since it was checked
                continue
        return None

    def entries(self) -> list[DatasetEntry]:
        return [self._entries[name] for name in sorted(self._entries)]

    def find(self, name: str) -> DatasetEntry | None:
        return self._entries.get(name)

    def read_spec(self, name: str) -> DatasetSpec | None:
        """The spec of a dataset folder as it is on disk now (None: missing or invalid), for a
        folder not read yet; reads a file, so call it off the event loop."""
        try:
            return load_spec(self.root / name)
        except SpecError:
            return None

    def get(self, name: str) -> DatasetEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(f"dataset {shown(name)!r} not found under {self.root}")
        return entry

    def valid(self, name: str) -> tuple[DatasetEntry, DatasetSpec]:
        """The entry and its spec; NotFound or InvalidArgument (with the spec's error)."""
        entry = self.get(name)
        if entry.spec is None:
            raise InvalidArgument(f"dataset {name!r} is invalid: {entry.error}")
        return entry, entry.spec

    def live_version(self, model: str) -> int:
        """The newest complete version (what a detector serves unless pinned); 0 when none."""
        versions = bundle.complete_versions(self.repository, model)
        return versions[-1] if versions else 0
