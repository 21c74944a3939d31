"""Writing versions into a model repository, atomically: the trainer is its only writer.

A version is staged in a hidden temporary folder inside the model folder, fsynced, and
renamed to the next free version number, so readers never see a half-written version under
an integer name.

Reason to change: how versions are written, retained and cleaned up.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

from oddity.common.bundle import (
    MANIFEST_FILE,
    TEMP_PREFIX,
    active_groups,
    check_versions,
    is_valid_model_name,
    list_models,
    list_versions,
    manifest_to_json,
    sha256_bytes,
    validate_manifest,
)
from oddity.common.bundle.index_contract import index_files
from oddity.trainer.graph_memory import scratch_bytes_per_row
from oddity.v1 import manifest_pb2


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_version(repository: Path, manifest: manifest_pb2.ModelManifest, files: Mapping[str, bytes]) -> int:
    """Write a new version atomically and return its number.

    The files go into a temporary folder inside the model folder, are fsynced, and the folder
    is renamed to the next free version number; manifest.version is set to that number.
    `files` maps file name -> bytes (ONNX models and index files); the sha256 of each active
    group and of each index file, and each group's scratch memory per row, are filled in from them.
    """
    if not is_valid_model_name(manifest.name):
        raise ValueError(f"invalid model name {manifest.name!r}")
    model_dir = repository / manifest.name
    model_dir.mkdir(parents=True, exist_ok=True)
    staged = manifest_pb2.ModelManifest()
    staged.CopyFrom(manifest)
    for group in active_groups(staged):
        if group.onnx_file not in files:
            raise ValueError(f"group {group.name!r}: no bytes given for {group.onnx_file}")
        group.sha256 = sha256_bytes(files[group.onnx_file])
        group.scratch_bytes_per_row = scratch_bytes_per_row(files[group.onnx_file], int(staged.input_dimension))
    for entry in index_files(staged):
        if entry.file not in files:
            raise ValueError(f"similarity index: no bytes given for {entry.file}")
        entry.sha256 = sha256_bytes(files[entry.file])
    temp_dir = model_dir / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
    temp_dir.mkdir()
    try:
        for file_name, data in files.items():
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
    """Retention: keep the newest `keep` complete versions; returns the versions removed.

    Complete versions older than those are removed, and so are broken folders older than the
    newest complete version. The newest complete version is never removed, and broken folders
    newer than it are left alone (a copy by hand may be in progress); with no complete version
    nothing is removed. Detectors hold loaded versions in memory, so removing a folder never
    breaks serving."""
    if keep < 1:
        raise ValueError("keep must be >= 1")
    checks = check_versions(model_dir.parent, model_dir.name)
    complete = [c.version for c in checks if c.complete]
    if not complete:
        return []
    kept = set(complete[-keep:])
    removed = [c.version for c in checks if c.version < complete[-1] and c.version not in kept]
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
