"""The model repository as the detector sees it: complete versions only, newest first,
pins, LoadModel / UnloadModel, and failures that never touch the serving version."""

import os
import shutil
import time

import grpc
import numpy as np
import pytest

from oddity.common import bundle
from oddity.v1 import detector_pb2
from tests.conftest import start_detector
from tests.support import models
from tests.support.client import detect_request
from tests.support.waiting import wait_for

D = 6


@pytest.fixture(scope="module")
def fits():
    return [models.fit_pca_group(models.normal_rows(800, D, seed=s), components=2, seed=s) for s in range(3)]


def serving_version(detector, name="m") -> int:
    return detector.stub.Detect(detect_request(name, models.normal_rows(1, D))).model_version




def rescan(detector) -> None:
    """One repository scan now, as a poll does it (readiness included)."""
    detector.server.call(lambda: detector.service.refresh())


def stage_copy(repository, source_version: int, target_version: int):
    """Copy a version folder by hand (not through the publisher)."""
    target = repository / "m" / str(target_version)
    shutil.copytree(repository / "m" / str(source_version), target)
    manifest = bundle.read_manifest(target)
    manifest.version = target_version
    (target / bundle.MANIFEST_FILE).write_text(bundle.manifest_to_json(manifest))
    return target


def test_new_version_serves_within_two_poll_intervals(repository, detector, fits):
    models.publish_simple(repository, "m", fits[0], dimension=D)
    assert wait_for(lambda: detector.model_registry.has_models)
    assert serving_version(detector) == 1
    published = time.monotonic()
    models.publish_simple(repository, "m", fits[1], dimension=D)
    assert wait_for(lambda: serving_version(detector) == 2, timeout=2 * 0.2 + 1.0)
    assert time.monotonic() - published < 2 * 0.2 + 1.0
    rows = models.normal_rows(4, D)
    np.testing.assert_allclose(
        detector.stub.Detect(detect_request("m", rows)).scores, models.score_with_onnx(fits[1].onnx, rows), rtol=1e-5
    )


def test_half_copied_version_is_skipped_until_complete(repository, detector, fits):
    models.publish_simple(repository, "m", fits[0], dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    target = stage_copy(repository, 1, 2)
    data = (target / "all.onnx").read_bytes()
    (target / "all.onnx").write_bytes(data[: len(data) // 3])  # the copy is still running
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    assert serving_version(detector) == 1
    status = detector.stub.GetModel(detector_pb2.GetModelRequest(model="m")).status
    assert "version 2" in status.last_error and "sha256" in status.last_error
    assert list(status.available_versions) == [1]
    assert list(status.rejected_versions) == [2] and "sha256" in status.rejected_versions[2]
    (target / "all.onnx").write_bytes(data)  # the copy finishes
    assert wait_for(lambda: serving_version(detector) == 2)
    status = detector.stub.GetModel(detector_pb2.GetModelRequest(model="m")).status
    assert list(status.available_versions) == [1, 2] and not status.rejected_versions


def test_sha_mismatch_and_corrupt_onnx_are_never_served(repository, fits):
    # Scans only when the test forces them, so each bad folder is seen once in its final state.
    detector = start_detector(repository, poll_interval_seconds=3600)
    try:
        models.publish_simple(repository, "m", fits[0], dimension=D)
        detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
        # v2: the manifest names another file's hash.
        target = stage_copy(repository, 1, 2)
        (target / "all.onnx").write_bytes(fits[2].onnx)
        rescan(detector)
        status = detector.stub.GetModel(detector_pb2.GetModelRequest(model="m")).status
        assert status.serving_version == 1
        assert status.last_error.startswith("version 2: group 'all': sha256 of all.onnx is ")
        # v3: the hash matches but the bytes are not an ONNX model.
        target = stage_copy(repository, 1, 3)
        garbage = b"\x08\x07garbage" * 100
        (target / "all.onnx").write_bytes(garbage)
        manifest = bundle.read_manifest(target)
        manifest.groups[0].sha256 = bundle.sha256_bytes(garbage)
        (target / bundle.MANIFEST_FILE).write_text(bundle.manifest_to_json(manifest))
        for _ in range(3):  # several scans
            rescan(detector)
            assert serving_version(detector) == 1
        status = detector.stub.GetModel(detector_pb2.GetModelRequest(model="m")).status
        assert status.serving_version == 1
        assert status.last_error.startswith("version 3: group 'all': ONNX Runtime cannot load all.onnx: ")
        # Complete on disk but not loadable is rejected too, with the load's reason.
        assert list(status.available_versions) == [1]
        assert sorted(status.rejected_versions) == [2, 3]
        assert status.rejected_versions[3].startswith("group 'all': ONNX Runtime cannot load all.onnx: ")
        # Rejections are counted once per bad folder, not once per scan.
        assert detector.metric("oddity_detector_rejected_versions_total", model="m", reason="incomplete") == 1
        assert detector.metric("oddity_detector_rejected_versions_total", model="m", reason="load_failed") == 1
        # LoadModel of a version tries it again and says why it cannot serve.
        with pytest.raises(grpc.RpcError) as info:
            detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m", version=3))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ONNX Runtime cannot load all.onnx" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m", version=2))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sha256 of all.onnx" in info.value.details()
        assert serving_version(detector) == 1
        assert detector.metric("oddity_detector_rejected_versions_total", model="m", reason="incomplete") == 2
        assert detector.metric("oddity_detector_rejected_versions_total", model="m", reason="load_failed") == 2
    finally:
        detector.close()


def test_graph_with_wrong_interface_is_refused(repository, detector, fits):
    models.publish_simple(repository, "m", fits[0], dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    wrong = models.fit_pca_group(models.normal_rows(500, D + 1), components=2)
    models.publish(
        repository, "m", {"all": (models.group_proto("all", wrong), wrong.onnx)}, dimension=D
    )  # manifest says D features, graph takes D + 1
    with pytest.raises(grpc.RpcError) as info:
        detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m", version=2))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not take [N, 6] rows" in info.value.details()
    assert serving_version(detector) == 1


def test_pin_unload_and_load(repository, detector, fits):
    for fit in fits:
        models.publish_simple(repository, "m", fit, dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    assert serving_version(detector) == 3
    pinned = detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m", version=1)).status
    assert pinned.serving_version == 1 and pinned.pinned_version == 1
    rescan(detector)  # scans do not move a pinned model
    assert serving_version(detector) == 1
    unloaded = detector.stub.UnloadModel(detector_pb2.UnloadModelRequest(model="m")).status
    assert unloaded.unloaded and unloaded.serving_version == 0
    rescan(detector)  # scans do not bring it back
    with pytest.raises(grpc.RpcError) as info:
        detector.stub.Detect(detect_request("m", models.normal_rows(1, D)))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "model 'm' is unloaded on this detector; LoadModel serves it again"
    latest = detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m")).status
    assert latest.serving_version == 3 and latest.pinned_version == 0 and not latest.unloaded
    listed = detector.stub.ListModels(detector_pb2.ListModelsRequest()).models
    assert [(m.name, m.serving_version, list(m.available_versions)) for m in listed] == [("m", 3, [1, 2, 3])]
    got = detector.stub.GetModel(detector_pb2.GetModelRequest(model="m"))
    assert got.manifest.version == 3 and got.manifest.groups[0].sha256 == bundle.sha256_bytes(fits[2].onnx)


def test_pinned_version_from_settings(repository, fits):
    for fit in fits:
        models.publish_simple(repository, "m", fit, dimension=D)
    handle = start_detector(repository, pinned_versions={"m": 2})
    try:
        assert serving_version(handle) == 2
    finally:
        handle.close()


def test_removed_model_folder_stops_serving(repository, detector, fits):
    models.publish_simple(repository, "m", fits[0], dimension=D)
    models.publish_simple(repository, "other", fits[1], dimension=D)
    assert wait_for(lambda: len(detector.stub.ListModels(detector_pb2.ListModelsRequest()).models) == 2)
    shutil.rmtree(repository / "m")
    assert wait_for(
        lambda: [m.name for m in detector.stub.ListModels(detector_pb2.ListModelsRequest()).models] == ["other"]
    )
    assert serving_version(detector, "other") == 1


def test_old_version_is_released_after_its_requests_finish(repository, detector, fits):
    models.publish_simple(repository, "m", fits[0], dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    old = detector.model_registry.acquire("m")  # a request in flight on v1
    models.publish_simple(repository, "m", fits[1], dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    assert serving_version(detector) == 2
    assert not old.released and detector.model_registry.draining() == 1
    scores = old.score(models.normal_rows(2, D))  # still usable by its request
    assert len(scores.scores) == 2
    old.release()
    assert old.released and detector.model_registry.draining() == 0
    assert os.path.isdir(repository / "m" / "1")  # the detector never writes to the repository


def test_a_lease_added_for_a_batch_keeps_a_retired_version_until_it_is_returned(repository, detector, fits):
    """A batch on a worker adds its own lease: its callers may give up (and return theirs)
    while it runs, after a swap retired the version."""
    models.publish_simple(repository, "m", fits[0], dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    old = detector.model_registry.acquire("m")  # the batch's caller
    old.add_lease()  # the batch on its worker
    models.publish_simple(repository, "m", fits[1], dimension=D)
    detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
    old.release()  # the caller gave up
    assert not old.released
    assert len(old.score(models.normal_rows(2, D), bulk=True).scores) == 2
    old.release()  # the batch is done
    assert old.released and detector.model_registry.draining() == 0
