"""Reading a model repository: which models and versions exist, and a version proven
complete (manifest valid, every active group's ONNX bytes matching their sha256).

Reason to change: how versions are found and verified on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from oddity.common.bundle.contract import (
    MANIFEST_FILE,
    BundleError,
    active_groups,
    is_valid_model_name,
    parse_manifest,
    validate_manifest,
)
from oddity.common.bundle.index_contract import index_files
from oddity.v1 import manifest_pb2


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_models(repository: Path) -> list[str]:
    """Model folders in the repository (hidden and oddly named entries are ignored)."""
    try:
        entries = list(os.scandir(repository))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if e.is_dir() and is_valid_model_name(e.name))


def list_versions(model_dir: Path) -> list[int]:
    """Integer-named version folders, ascending. Temporary folders are not versions; a model
    "folder" that is missing or is a file has none."""
    try:
        entries = list(os.scandir(model_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(e.name) for e in entries if e.name.isdigit() and int(e.name) > 0 and e.is_dir())


def read_manifest(version_dir: Path) -> manifest_pb2.ModelManifest:
    path = version_dir / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{MANIFEST_FILE} missing") from exc
    return parse_manifest(data)


@dataclass(frozen=True)
class VerifiedVersion:
    """A complete version: its manifest and the verified bytes of each active group's ONNX file
    and of every index file."""

    path: Path
    manifest: manifest_pb2.ModelManifest
    onnx: Mapping[str, bytes]  # group name -> file content
    index: Mapping[str, bytes] = field(default_factory=dict)  # index file name -> file content

    def files(self) -> dict[str, bytes]:
        """Every file of the version but the manifest, by file name: what a republished copy
        (a rollback, a threshold move) writes again."""
        named = {g.onnx_file: self.onnx[g.name] for g in active_groups(self.manifest)}
        return {**named, **self.index}


def load_verified_version(repository: Path, name: str, version: int) -> VerifiedVersion:
    """Read a version and prove it complete. The bytes returned are the bytes hashed, so what
    gets loaded is exactly what was verified. The verdict is remembered (check_versions), so a
    version that was just loaded is not read and hashed again to be listed."""
    path = repository / name / str(version)
    signature = version_signature(path)
    try:
        verified = _load_verified(repository, name, version)
    except BundleError as exc:
        _VERDICTS.record(path, VersionCheck(version, signature, str(exc)))
        raise
    except OSError as exc:
        _VERDICTS.record(path, VersionCheck(version, signature, f"{type(exc).__name__}: {exc}"))
        raise
    _VERDICTS.record(path, VersionCheck(version, signature))
    return verified


def _load_verified(repository: Path, name: str, version: int) -> VerifiedVersion:
    path = repository / name / str(version)
    manifest = read_manifest(path)
    validate_manifest(manifest, name=name, version=version)
    onnx: dict[str, bytes] = {}
    for group in active_groups(manifest):
        onnx[group.name] = _verified_bytes(path / group.onnx_file, group.sha256, f"group {group.name!r}: ")
    index: dict[str, bytes] = {}
    for entry in index_files(manifest):
        index[entry.file] = _verified_bytes(path / entry.file, entry.sha256, "similarity index: ")
    return VerifiedVersion(path=path, manifest=manifest, onnx=onnx, index=MappingProxyType(index))


def _verified_bytes(path: Path, sha256: str, where: str) -> bytes:
    """The file's bytes, when they hash to `sha256`; `where` prefixes the error."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{where}{path.name} missing") from exc
    digest = sha256_bytes(data)
    if digest != sha256:
        raise BundleError(
            f"{where}sha256 of {path.name} is {digest[:12]}…, manifest says {sha256[:12]}… "
            "(incomplete copy or corrupt file)"
        )
    return data


def newest_complete_version(repository: Path, name: str) -> VerifiedVersion | None:
    """The newest complete version of a model, if any (newest first: each folder is read and
    hashed once, and the verdicts are remembered for check_versions)."""
    for version in reversed(list_versions(repository / name)):
        try:
            return load_verified_version(repository, name, version)
        except (BundleError, OSError):
            continue
    return None


@dataclass(frozen=True)
class VersionCheck:
    """The verdict on one version folder, for the folder state `signature`."""

    version: int
    signature: tuple
    error: str = ""  # why the version is not complete; "" when it is

    @property
    def complete(self) -> bool:
        return not self.error


class _Verdicts:
    """Verdicts by folder path, valid while the folder's signature is unchanged: a repeated
    scan re-hashes only the folders whose files changed."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._by_path: dict[str, VersionCheck] = {}

    def check(self, repository: Path, name: str, version: int) -> VersionCheck:
        path = repository / name / str(version)
        signature = version_signature(path)
        with self._lock:
            known = self._by_path.get(str(path))
        if known is not None and known.signature == signature:
            return known
        with contextlib.suppress(BundleError, OSError):
            load_verified_version(repository, name, version)  # records the verdict either way
        with self._lock:
            return self._by_path[str(path)]

    def record(self, path: Path, verdict: VersionCheck) -> None:
        with self._lock:
            if len(self._by_path) >= self._limit:
                self._by_path.clear()
            self._by_path[str(path)] = verdict


_VERDICTS = _Verdicts()


def check_versions(repository: Path, name: str) -> list[VersionCheck]:
    """Every integer-named version folder of a model, ascending, each proven complete or not
    with `load_verified_version`'s checks (manifest valid and agreeing with its folder, every
    active group's ONNX sha256 as the manifest says). Verdicts are cached by folder signature,
    so repeated scans only stat the files of unchanged folders."""
    return [_VERDICTS.check(repository, name, version) for version in list_versions(repository / name)]


def complete_versions(repository: Path, name: str) -> list[int]:
    """The complete versions of a model, ascending: the one view of versions that serving,
    rollback, thresholds and retention share."""
    return [check.version for check in check_versions(repository, name) if check.complete]


def version_signature(version_dir: Path) -> tuple:
    """Cheap fingerprint of a version folder (names, sizes, mtimes): a changed signature means
    the folder must be checked again."""
    try:
        entries = sorted(os.scandir(version_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return ()
    signature = []
    for entry in entries:
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        signature.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(signature)
