"""The trainer's decisions about versions: a new model, a rollback, a threshold move each
becomes a new version number (written by bundle_writer), so every detector replica and every
log line agrees on what serves. Telling others about a version is the announcer's job.

Reason to change: what a new model, a rollback or a threshold move writes.
"""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np

from oddity.common import bundle
from oddity.common.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from oddity.common.logging import get_logger
from oddity.trainer import bundle_writer
from oddity.v1 import manifest_pb2

log = get_logger("oddity.trainer.publisher")


def unwritable(repository: Path, exc: OSError) -> str:
    """What a failed write into the model repository tells its caller (training and the admin
    calls alike): a read-only, full or missing volume is the operator's to fix."""
    return f"cannot write to the model repository {repository}: {exc.strerror or type(exc).__name__}"


def repository_error(repository: Path, exc: OSError) -> ResourceExhausted | FailedPrecondition:
    """The admin calls' status for a failed write: a full disk is RESOURCE_EXHAUSTED, anything
    else (read-only, permissions, missing) FAILED_PRECONDITION."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(unwritable(repository, exc))
    return FailedPrecondition(unwritable(repository, exc))


class Publisher:
    def __init__(self, repository: Path) -> None:
        self.repository = repository

    def remove_unfinished(self) -> list[Path]:
        """After a crash: delete the temporary folders of versions that were never renamed."""
        removed = bundle_writer.remove_stale_temp_dirs(self.repository)
        if removed:
            log.warning("removed unfinished versions", folders=[str(p) for p in removed])
        return removed

    def publish(self, manifest: manifest_pb2.ModelManifest, files: dict[str, bytes], keep: int) -> int:
        """`files`: the ONNX models and index files of the version, by file name."""
        version = bundle_writer.publish_version(self.repository, manifest, files)
        removed = bundle_writer.prune_versions(self.repository / manifest.name, keep)
        log.info("version published", model=manifest.name, version=version, pruned=removed)
        return version

    def rollback(self, name: str, version: int, keep: int) -> tuple[int, int]:
        """Republish an earlier version's bundle as a new version; returns (new, restored).

        Version 0 restores the newest complete version before the live one (the newest
        complete version); broken folders are never candidates, and naming one explicitly is
        FAILED_PRECONDITION with the reason."""
        live = self._live(name)
        if version == 0:
            earlier = [v for v in bundle.complete_versions(self.repository, name) if v < live]
            if not earlier:
                raise FailedPrecondition(
                    f"model {name!r} has no complete version before live version {live} to roll back to"
                )
            version = earlier[-1]
        elif version not in (versions := bundle.list_versions(self.repository / name)):
            raise NotFound(f"version {version} of model {name!r} not found (kept: {versions})")
        source = self._verified(name, version)
        manifest = manifest_pb2.ModelManifest()
        manifest.CopyFrom(source.manifest)
        manifest.description = f"rollback to version {version}"
        manifest.created_at.GetCurrentTime()
        files = source.files()  # the index goes with the models
        return self.publish(manifest, files, keep), version

    def set_threshold(self, name: str, percentile: float, keep: int) -> tuple[int, dict[str, float]]:
        """Republish the live version with thresholds at another percentile of each group's
        held-out normal scores (its quantile table); returns (new version, thresholds)."""
        if not 0.0 < percentile < 100.0:
            raise InvalidArgument(f"percentile must lie in (0, 100), got {percentile}")
        source = self._verified(name, self._live(name))
        if source.manifest.task != bundle.ANOMALY_DETECTION:
            raise FailedPrecondition(f"model {name!r} is a classifier; it has no anomaly threshold")
        manifest = manifest_pb2.ModelManifest()
        manifest.CopyFrom(source.manifest)
        thresholds = {}
        for group in bundle.active_groups(manifest):
            q = group.quantiles
            group.threshold = float(np.interp(percentile / 100.0, list(q.probabilities), list(q.values)))
            group.threshold_percentile = percentile
            if group.HasField("calibration"):  # what the new threshold flags of normal rows
                group.calibration.expected_anomaly_rate = 1 - percentile / 100
            thresholds[group.name] = group.threshold
        manifest.description = f"threshold moved to percentile {percentile:g} from version {source.manifest.version}"
        manifest.created_at.GetCurrentTime()
        files = source.files()  # the index goes with the models
        return self.publish(manifest, files, keep), thresholds

    def _live(self, name: str) -> int:
        """The live version: the newest complete one."""
        if not bundle.list_versions(self.repository / name):
            raise NotFound(f"model {name!r} has no versions")
        complete = bundle.complete_versions(self.repository, name)
        if not complete:
            raise FailedPrecondition(f"model {name!r} has no complete version")
        return complete[-1]

    def _verified(self, name: str, version: int) -> bundle.VerifiedVersion:
        try:
            return bundle.load_verified_version(self.repository, name, version)
        except bundle.BundleError as exc:
            raise FailedPrecondition(f"version {version} of model {name!r} is not complete: {exc}") from exc
