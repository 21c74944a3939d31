"""One view of versions: the trainer (live version, rollback, retention) and the detector
(available and rejected versions) agree on which versions are complete; and History keeps
integers integral."""

import json
import shutil

import grpc
import numpy as np
import pytest

from oddity.common import bundle
from oddity.trainer.history import History
from oddity.v1 import detector_pb2, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets, models
from tests.support.client import detect_request
from tests.support.waiting import wait_for

D = 8




def renumber(repository, source: int, target: int, *, copy: bool = False):
    """A version folder moved (or copied) by hand to another number, its manifest agreeing."""
    folder = repository / "m" / str(target)
    (shutil.copytree if copy else shutil.move)(repository / "m" / str(source), folder)
    manifest = bundle.read_manifest(folder)
    manifest.version = target
    (folder / bundle.MANIFEST_FILE).write_text(bundle.manifest_to_json(manifest))
    return folder


@pytest.fixture
def broken_repository(repository):
    """Complete v10 and v11, v12 with a sha256 mismatch, v13 a manifest without its ONNX file."""
    fits = [models.fit_pca_group(models.normal_rows(400, D, seed=s), components=2, seed=s) for s in range(2)]
    for fit in fits:
        models.publish_simple(repository, "m", fit, dimension=D)
    renumber(repository, 1, 10)
    renumber(repository, 2, 11)
    corrupt = renumber(repository, 11, 12, copy=True)
    (corrupt / "all.onnx").write_bytes(fits[0].onnx)
    manifest_only = renumber(repository, 11, 13, copy=True)
    (manifest_only / "all.onnx").unlink()
    return repository, fits


def test_trainer_and_detector_agree_on_complete_versions(broken_repository, data_volume):
    repository, fits = broken_repository
    spec = datasets.autoencoder_spec(retrain={"policy": "manual"}, keep_versions=2)
    datasets.write_dataset(data_volume, "m", spec, {"rows.csv": datasets.sensor_frame(300)})
    assert bundle.complete_versions(repository, "m") == [10, 11]
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    try:
        rows = models.normal_rows(3, D)
        assert wait_for(lambda: detector.model_registry.has_models)
        assert detector.stub.Detect(detect_request("m", rows)).model_version == 11
        status = trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="m")).datasets[0]
        assert status.live_version == 11

        (listed,) = detector.stub.ListModels(detector_pb2.ListModelsRequest()).models
        assert list(listed.available_versions) == [10, 11]
        assert sorted(listed.rejected_versions) == [12, 13]
        assert "sha256 of all.onnx" in listed.rejected_versions[12]
        assert "all.onnx missing" in listed.rejected_versions[13]

        # A broken folder named explicitly is refused with its reason.
        with pytest.raises(grpc.RpcError) as info:
            trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="m", version=12))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 12 of model 'm' is not complete" in info.value.details()

        # Version 0: the newest complete version before the live one (10, not the corrupt 12).
        rolled = trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="m"))
        assert (rolled.version, rolled.restored_from) == (14, 10)
        assert bundle.load_verified_version(repository, "m", 14).onnx == {"all": fits[0].onnx}
        # Retention (keep_versions 2): the two newest complete versions; broken folders older
        # than the newest complete one are gone with v10.
        assert bundle.list_versions(repository / "m") == [11, 14]
        np.testing.assert_allclose(
            detector.stub.Detect(detect_request("m", rows)).scores,
            models.score_with_onnx(fits[0].onnx, rows),
            rtol=1e-5,
        )
        status = trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="m")).datasets[0]
        assert status.live_version == 14
        model = detector.stub.GetModel(detector_pb2.GetModelRequest(model="m")).status
        assert (model.serving_version, list(model.available_versions), dict(model.rejected_versions)) == (
            14,
            [11, 14],
            {},
        )
    finally:
        trainer.close()
        detector.close()


def test_history_keeps_integers_integral(data_volume, repository):
    History(data_volume / ".oddity" / "history.jsonl").append(
        "ROLLED_BACK", "m", "version 1 of m serves again as version 3", version=3, restored_from=1, ratio=0.5
    )
    trainer = start_trainer(data_volume, repository)
    try:
        (event,) = trainer.stub.History(trainer_pb2.HistoryRequest(dataset="m")).events
    finally:
        trainer.close()
    details = json.loads(event.details_json)
    assert details == {"version": 3, "restored_from": 1, "ratio": 0.5}
    assert type(details["version"]) is int and type(details["ratio"]) is float
    assert event.details["version"] == 3.0  # the Struct's double, for callers that read it
