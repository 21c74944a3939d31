import json
import os

import numpy as np
import pytest

from oddity.common import bundle
from oddity.trainer import bundle_writer
from oddity.v1 import manifest_pb2
from tests.support import models


@pytest.fixture(scope="module")
def fitted():
    return models.fit_pca_group(models.normal_rows(500, 6), components=2)


def test_publish_writes_a_complete_numbered_version(repository, fitted):
    assert models.publish_simple(repository, "m", fitted, dimension=6) == 1
    assert models.publish_simple(repository, "m", fitted, dimension=6) == 2
    assert bundle.list_versions(repository / "m") == [1, 2]
    verified = bundle.load_verified_version(repository, "m", 2)
    assert verified.manifest.version == 2
    assert verified.onnx["all"] == fitted.onnx
    text = (repository / "m" / "2" / bundle.MANIFEST_FILE).read_text()
    assert json.loads(text)["groups"][0]["sha256"] == bundle.sha256_bytes(fitted.onnx)
    assert not [p for p in (repository / "m").iterdir() if p.name.startswith(".")]


def test_corrupt_or_partial_versions_are_refused(repository, fitted):
    models.publish_simple(repository, "m", fitted, dimension=6)
    onnx_path = repository / "m" / "1" / "all.onnx"
    data = onnx_path.read_bytes()
    onnx_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(bundle.BundleError, match=r"sha256 of all.onnx .* \(incomplete copy or corrupt file\)"):
        bundle.load_verified_version(repository, "m", 1)
    onnx_path.unlink()
    with pytest.raises(bundle.BundleError, match=r"all\.onnx missing"):
        bundle.load_verified_version(repository, "m", 1)
    (repository / "m" / "1" / bundle.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(bundle.BundleError, match="not a valid manifest"):
        bundle.load_verified_version(repository, "m", 1)
    (repository / "m" / "1" / bundle.MANIFEST_FILE).unlink()
    with pytest.raises(bundle.BundleError, match=r"manifest\.json missing"):
        bundle.load_verified_version(repository, "m", 1)


def test_manifest_must_agree_with_its_folder(repository, fitted):
    models.publish_simple(repository, "m", fitted, dimension=6)
    path = repository / "m" / "1" / bundle.MANIFEST_FILE
    manifest = bundle.parse_manifest(path.read_text())
    manifest.version = 7
    path.write_text(bundle.manifest_to_json(manifest))
    with pytest.raises(bundle.BundleError, match="manifest says version 7, folder is 1"):
        bundle.load_verified_version(repository, "m", 1)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: setattr(m, "input_dimension", 0), "input_dimension must be positive"),
        (lambda m: m.feature_names.extend(["a"]), "1 feature_names for input_dimension 6"),
        (lambda m: m.groups[0].quantiles.values.reverse(), "quantile values must not fall"),
        (lambda m: setattr(m.groups[0], "threshold_percentile", 100.0), r"threshold_percentile must lie in \(0, 100\)"),
        (lambda m: setattr(m.groups[0], "onnx_file", "../x.onnx"), "must be a plain file name"),
        (lambda m: setattr(m.groups[0], "status", manifest_pb2.GROUP_STATUS_FAILED), "no active group"),
        (lambda m: setattr(m, "task", manifest_pb2.MODEL_TASK_UNSPECIFIED), "no task"),
    ],
)
def test_manifest_validation_names_the_problem(fitted, mutate, message):
    manifest = manifest_pb2.ModelManifest(
        name="m", version=1, kind="autoencoder", task=manifest_pb2.MODEL_TASK_ANOMALY_DETECTION, input_dimension=6
    )
    group = manifest.groups.add()
    group.CopyFrom(models.group_proto("all", fitted))
    group.sha256 = bundle.sha256_bytes(fitted.onnx)
    bundle.validate_manifest(manifest, name="m", version=1)
    mutate(manifest)
    with pytest.raises(bundle.BundleError, match=message):
        bundle.validate_manifest(manifest, name="m", version=1)


def test_temporary_and_odd_folders_are_not_versions(repository, fitted):
    models.publish_simple(repository, "m", fitted, dimension=6)
    (repository / "m" / ".tmp-abc").mkdir()
    (repository / "m" / "latest").mkdir()
    (repository / "m" / "0").mkdir()
    assert bundle.list_versions(repository / "m") == [1]
    assert bundle_writer.remove_stale_temp_dirs(repository) == [repository / "m" / ".tmp-abc"]
    assert not (repository / "m" / ".tmp-abc").exists()


def test_signature_changes_when_a_file_changes(repository, fitted):
    models.publish_simple(repository, "m", fitted, dimension=6)
    folder = repository / "m" / "1"
    before = bundle.version_signature(folder)
    os.utime(folder / "all.onnx", ns=(1, 1))
    assert bundle.version_signature(folder) != before
    assert np.isfinite(fitted.threshold)


def test_prune_keeps_the_newest_versions(repository, fitted):
    for _ in range(5):
        models.publish_simple(repository, "m", fitted, dimension=6)
    assert bundle_writer.prune_versions(repository / "m", keep=2) == [1, 2, 3]
    assert bundle.list_versions(repository / "m") == [4, 5]
    assert models.publish_simple(repository, "m", fitted, dimension=6) == 6


def _break(repository, version: int, how: str) -> None:
    folder = repository / "m" / str(version)
    if how == "corrupt":
        (folder / "all.onnx").write_bytes(b"not the bytes the manifest names")
    else:  # manifest only
        (folder / "all.onnx").unlink()


def test_complete_versions_skip_broken_folders_and_follow_their_changes(repository, fitted):
    for _ in range(4):
        models.publish_simple(repository, "m", fitted, dimension=6)
    good = (repository / "m" / "3" / "all.onnx").read_bytes()
    _break(repository, 3, "corrupt")
    _break(repository, 4, "manifest only")
    checks = bundle.check_versions(repository, "m")
    assert [(c.version, c.complete) for c in checks] == [(1, True), (2, True), (3, False), (4, False)]
    assert "sha256 of all.onnx" in checks[2].error and "all.onnx missing" in checks[3].error
    assert bundle.complete_versions(repository, "m") == [1, 2]
    assert bundle.newest_complete_version(repository, "m").manifest.version == 2
    (repository / "m" / "3" / "all.onnx").write_bytes(good)  # repaired: the changed folder is checked again
    assert bundle.complete_versions(repository, "m") == [1, 2, 3]


def test_prune_keeps_complete_versions_and_removes_older_broken_folders(repository, fitted):
    for _ in range(6):
        models.publish_simple(repository, "m", fitted, dimension=6)
    _break(repository, 2, "corrupt")
    _break(repository, 4, "manifest only")
    _break(repository, 6, "corrupt")  # newer than the newest complete: maybe a copy in progress
    # Complete: 1, 3, 5. Keep 2 of them; broken 2 and 4 are older than 5, broken 6 is not.
    assert bundle_writer.prune_versions(repository / "m", keep=2) == [1, 2, 4]
    assert bundle.list_versions(repository / "m") == [3, 5, 6]


def test_prune_never_removes_the_newest_complete_version_nor_anything_without_one(repository, fitted):
    for _ in range(3):
        models.publish_simple(repository, "m", fitted, dimension=6)
    _break(repository, 2, "corrupt")
    _break(repository, 3, "corrupt")
    assert bundle_writer.prune_versions(repository / "m", keep=1) == []
    assert bundle.list_versions(repository / "m") == [1, 2, 3]
    _break(repository, 1, "manifest only")
    assert bundle_writer.prune_versions(repository / "m", keep=1) == []
    assert bundle.list_versions(repository / "m") == [1, 2, 3]
