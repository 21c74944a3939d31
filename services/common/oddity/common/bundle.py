"""The model-bundle contract between trainer and detector.

A model repository holds `<repository>/<model>/<version>/manifest.json` plus one ONNX
file per active group. Versions are positive integers (the folder name). A version
counts only when complete: the manifest parses, agrees with its folder, and every
active group's ONNX file has the sha256 the manifest names. Publishers write into a
hidden temporary folder and rename it into place, so readers never see a half-written
version under an integer name; a version copied in by hand may still be half-copied,
which the completeness check catches.

ONNX graph interface (all float32):
  input            "input"           [N, D] raw features (any scaling is inside the graph)
  anomaly models   "score"           [N]    higher = more anomalous
                   "feature_errors"  [N, D] optional per-feature errors, for explanations
  classifiers      "label"           [N]    int64 class index
                   "probabilities"   [N, C] in the order of manifest.class_labels
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from google.protobuf import json_format

from oddity.v1 import manifest_pb2

MANIFEST_FILE = "manifest.json"
ALL_GROUP = "all"
INPUT_NAME = "input"
SCORE_OUTPUT = "score"
FEATURE_ERRORS_OUTPUT = "feature_errors"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
TEMP_PREFIX = ".tmp-"

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class BundleError(Exception):
    """A version folder that is incomplete, corrupt or contradicts its manifest."""


def is_valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_models(repository: Path) -> list[str]:
    """Model folders in the repository (hidden and oddly named entries are ignored)."""
    try:
        entries = list(os.scandir(repository))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if e.is_dir() and is_valid_model_name(e.name))


def list_versions(model_dir: Path) -> list[int]:
    """Integer-named version folders, ascending. Temporary folders are not versions."""
    try:
        entries = list(os.scandir(model_dir))
    except FileNotFoundError:
        return []
    return sorted(int(e.name) for e in entries if e.name.isdigit() and int(e.name) > 0 and e.is_dir())


def parse_manifest(text: str | bytes, *, source: str = MANIFEST_FILE) -> manifest_pb2.ModelManifest:
    try:
        # Unknown fields are ignored so that an older detector can read a newer trainer's manifest.
        return json_format.Parse(text, manifest_pb2.ModelManifest(), ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{source} is not a valid manifest: {exc}") from exc


def manifest_to_json(manifest: manifest_pb2.ModelManifest) -> str:
    return json_format.MessageToJson(manifest, indent=2, sort_keys=True) + "\n"


def read_manifest(version_dir: Path) -> manifest_pb2.ModelManifest:
    path = version_dir / MANIFEST_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{MANIFEST_FILE} missing") from exc
    return parse_manifest(data)


def active_groups(manifest: manifest_pb2.ModelManifest) -> list[manifest_pb2.ModelGroup]:
    return [g for g in manifest.groups if g.status == manifest_pb2.GROUP_STATUS_ACTIVE]


def validate_manifest(manifest: manifest_pb2.ModelManifest, *, name: str, version: int) -> None:
    """Raise BundleError when the manifest contradicts its folder or itself."""
    if manifest.name != name:
        raise BundleError(f"manifest names model {manifest.name!r}, folder is {name!r}")
    if manifest.version != version:
        raise BundleError(f"manifest says version {manifest.version}, folder is {version}")
    if manifest.task == manifest_pb2.MODEL_TASK_UNSPECIFIED:
        raise BundleError("manifest has no task")
    if manifest.input_dimension <= 0:
        raise BundleError(f"input_dimension must be positive, got {manifest.input_dimension}")
    if manifest.feature_names and len(manifest.feature_names) != manifest.input_dimension:
        raise BundleError(f"{len(manifest.feature_names)} feature_names for input_dimension {manifest.input_dimension}")
    if len(set(manifest.feature_names)) != len(manifest.feature_names):
        raise BundleError("feature_names has duplicates")
    if manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION and not manifest.class_labels:
        raise BundleError("a classification manifest needs class_labels")
    names = [g.name for g in manifest.groups]
    if len(set(names)) != len(names):
        raise BundleError("group names are not unique")
    if not active_groups(manifest):
        raise BundleError("no active group")
    if not manifest.routing_key and len(manifest.groups) != 1:
        raise BundleError(f"{len(manifest.groups)} groups but no routing_key to choose between them")
    for group in manifest.groups:
        _validate_group(manifest, group)


def _validate_group(manifest: manifest_pb2.ModelManifest, group: manifest_pb2.ModelGroup) -> None:
    where = f"group {group.name!r}"
    if not _GROUP_NAME.match(group.name):
        raise BundleError(f"{where}: invalid group name")
    bounded = group.HasField("bounds") and (group.bounds.HasField("lower") or group.bounds.HasField("upper"))
    if group.name == ALL_GROUP and bounded:
        raise BundleError(f"{where}: the catch-all group takes no bounds")
    if group.name != ALL_GROUP and manifest.routing_key and not bounded:
        raise BundleError(f"{where}: needs bounds on {manifest.routing_key!r}")
    both_ends = bounded and group.bounds.HasField("lower") and group.bounds.HasField("upper")
    if both_ends and group.bounds.lower >= group.bounds.upper:
        raise BundleError(f"{where}: lower bound {group.bounds.lower} is not below upper {group.bounds.upper}")
    if group.status != manifest_pb2.GROUP_STATUS_ACTIVE:
        return
    file_name = group.onnx_file
    if not file_name or Path(file_name).name != file_name or file_name.startswith("."):
        raise BundleError(f"{where}: onnx_file {file_name!r} must be a plain file name")
    if not re.fullmatch(r"[0-9a-f]{64}", group.sha256):
        raise BundleError(f"{where}: sha256 must be 64 lower-case hex digits")
    if manifest.task == manifest_pb2.MODEL_TASK_ANOMALY_DETECTION:
        q = group.quantiles
        if len(q.probabilities) < 2 or len(q.probabilities) != len(q.values):
            raise BundleError(f"{where}: the quantile table needs >= 2 matching probabilities and values")
        probs, values = list(q.probabilities), list(q.values)
        if any(not 0.0 <= p <= 1.0 for p in probs) or any(b <= a for a, b in pairwise(probs)):
            raise BundleError(f"{where}: quantile probabilities must rise strictly within [0, 1]")
        if any(b < a for a, b in pairwise(values)):
            raise BundleError(f"{where}: quantile values must not fall")
        if not 0.0 < group.threshold_percentile < 100.0:
            raise BundleError(f"{where}: threshold_percentile must lie in (0, 100)")


@dataclass(frozen=True)
class VerifiedVersion:
    """A complete version: its manifest and the verified bytes of each active group's ONNX file."""

    path: Path
    manifest: manifest_pb2.ModelManifest
    onnx: Mapping[str, bytes]  # group name -> file content


def load_verified_version(repository: Path, name: str, version: int) -> VerifiedVersion:
    """Read a version and prove it complete. The bytes returned are the bytes hashed, so what
    gets loaded is exactly what was verified."""
    path = repository / name / str(version)
    manifest = read_manifest(path)
    validate_manifest(manifest, name=name, version=version)
    onnx: dict[str, bytes] = {}
    for group in active_groups(manifest):
        file_path = path / group.onnx_file
        try:
            data = file_path.read_bytes()
        except FileNotFoundError as exc:
            raise BundleError(f"group {group.name!r}: {group.onnx_file} missing") from exc
        digest = sha256_bytes(data)
        if digest != group.sha256:
            raise BundleError(
                f"group {group.name!r}: sha256 of {group.onnx_file} is {digest[:12]}…, manifest says "
                f"{group.sha256[:12]}… (incomplete copy or corrupt file)"
            )
        onnx[group.name] = data
    return VerifiedVersion(path=path, manifest=manifest, onnx=onnx)


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_version(repository: Path, manifest: manifest_pb2.ModelManifest, onnx_files: Mapping[str, bytes]) -> int:
    """Write a new version atomically and return its number.

    The files go into a temporary folder inside the model folder, are fsynced, and the folder
    is renamed to the next free version number; manifest.version is set to that number.
    onnx_files maps file name -> bytes; each active group's sha256 is filled in from them.
    """
    if not is_valid_model_name(manifest.name):
        raise ValueError(f"invalid model name {manifest.name!r}")
    model_dir = repository / manifest.name
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = manifest_pb2.ModelManifest()
    staged.CopyFrom(manifest)
    for group in active_groups(staged):
        if group.onnx_file not in onnx_files:
            raise ValueError(f"group {group.name!r}: no bytes given for {group.onnx_file}")
        group.sha256 = sha256_bytes(onnx_files[group.onnx_file])
    temp_dir = model_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    temp_dir.mkdir()
    try:
        for file_name, data in onnx_files.items():
            _write_synced(temp_dir / file_name, data)
        while True:
            version = (max(list_versions(model_dir), default=0)) + 1
            staged.version = version
            validate_manifest(staged, name=manifest.name, version=version)
            _write_synced(temp_dir / MANIFEST_FILE, manifest_to_json(staged).encode())
            _fsync_dir(temp_dir)
            try:
                # rename(2) onto a missing name is atomic; a racing publisher makes it fail.
                os.rename(temp_dir, model_dir / str(version))
            except OSError:
                if (model_dir / str(version)).exists():
                    continue
                raise
            _fsync_dir(model_dir)
            return version
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def prune_versions(model_dir: Path, keep: int) -> list[int]:
    """Delete all but the newest `keep` version folders; returns the versions removed.

    Detectors hold loaded versions in memory, so removing a folder never breaks serving."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    versions = list_versions(model_dir)
    removed = versions[:-keep]
    for version in removed:
        shutil.rmtree(model_dir / str(version), ignore_errors=True)
    return removed


def remove_stale_temp_dirs(repository: Path) -> list[Path]:
    """Delete temporary folders left by a publisher that died mid-write."""
    removed = []
    for name in list_models(repository):
        for entry in os.scandir(repository / name):
            if entry.name.startswith(TEMP_PREFIX) and entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed
