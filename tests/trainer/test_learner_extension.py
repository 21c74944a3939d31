"""A model kind joins by addition: a learner class defined here, in the test folder alone, is
registered, named in a dataset.yaml, trained by a real trainer, published and served by a real
detector over gRPC; nothing in the trainer, the pipeline or the detector names it."""

from collections.abc import Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from oddity.common import bundle
from oddity.trainer.learners import (
    AnomalyLearner,
    kinds,
    learner_class,
    load_entry_points,
    register_learner,
    unregister_learner,
)
from oddity.trainer.spec import SpecError, load_spec
from oddity.v1 import detector_pb2, manifest_pb2, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.client import detect_request
from tests.support.waiting import wait_for

KIND = "distance_to_mean"


class DistanceToMeanLearner(AnomalyLearner):
    """Score: the mean squared standardized distance to the training rows' mean; each
    feature's share of it explains the score."""

    kind = KIND
    explains = True
    PARAMS = {"floor"}

    def fit(self, x, y=None, progress=None):
        self.mean_ = x.mean(axis=0).astype(np.float64)
        self.scale_ = x.std(axis=0).astype(np.float64) + float(self.params.get("floor", 1e-6))
        if progress is not None:
            progress(1, 1, 0.0)
        return self

    def anomaly_scores(self, x):
        errors = ((np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_) ** 2
        return errors.mean(axis=1), errors.astype(np.float32)

    def to_onnx(self) -> bytes:
        d = len(self.mean_)
        graph = helper.make_graph(
            [
                helper.make_node("Sub", [bundle.INPUT_NAME, "mean"], ["centred"]),
                helper.make_node("Div", ["centred", "scale"], ["z"]),
                helper.make_node("Mul", ["z", "z"], [bundle.FEATURE_ERRORS_OUTPUT]),
                helper.make_node(
                    "ReduceMean", [bundle.FEATURE_ERRORS_OUTPUT], [bundle.SCORE_OUTPUT], axes=[1], keepdims=0
                ),
            ],
            "distance_to_mean",
            [helper.make_tensor_value_info(bundle.INPUT_NAME, TensorProto.FLOAT, ["N", d])],
            [
                helper.make_tensor_value_info(bundle.SCORE_OUTPUT, TensorProto.FLOAT, ["N"]),
                helper.make_tensor_value_info(bundle.FEATURE_ERRORS_OUTPUT, TensorProto.FLOAT, ["N", d]),
            ],
            [
                numpy_helper.from_array(self.mean_.astype(np.float32), "mean"),
                numpy_helper.from_array(self.scale_.astype(np.float32), "scale"),
            ],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", bundle.OPSET)])
        model.ir_version = bundle.IR_VERSION
        return model.SerializeToString()


@pytest.fixture
def toy_kind() -> Iterator[type[DistanceToMeanLearner]]:
    register_learner(DistanceToMeanLearner)
    yield DistanceToMeanLearner
    unregister_learner(KIND)


def run_job(trainer, dataset: str) -> trainer_pb2.Job:
    job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset=dataset)).job
    last = job
    for update in trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=120):
        last = update.job
    return last


def serving_version(detector, model: str) -> int:
    models = detector.stub.ListModels(detector_pb2.ListModelsRequest()).models
    return next((m.serving_version for m in models if m.name == model), 0)


def test_a_kind_defined_in_a_test_is_trained_published_and_served(toy_kind, data_volume, repository):
    normal = datasets.sensor_frame(1500, seed=0)
    spec = {
        "sources": [{"path": "*.csv"}],
        "retrain": {"policy": "manual"},
        "model": {"kind": KIND, "params": {"floor": 1e-3}},
    }
    datasets.write_dataset(data_volume, "plant", spec, {"normal.csv": normal})
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    try:
        job = run_job(trainer, "plant")
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
        wait_for(lambda: serving_version(detector, "plant") == 1, what="version 1 in the detector")

        manifest = detector.stub.GetModel(detector_pb2.GetModelRequest(model="plant")).manifest
        assert manifest.kind == KIND
        assert manifest.task == manifest_pb2.MODEL_TASK_ANOMALY_DETECTION
        (group,) = manifest.groups
        assert group.calibration.method == "cross_fit"
        assert group.metrics["parity_max_abs_diff"] < 1e-3

        shifted = normal.iloc[:200].to_numpy() + 6 * normal.std().to_numpy()
        rows = np.vstack([datasets.sensor_frame(200, seed=7).to_numpy(), shifted]).astype(np.float32)
        response = detector.stub.Detect(
            detect_request("plant", rows, feature_names=list(normal.columns), explain_top_k=1)
        )
        assert np.mean(response.is_anomaly[:200]) < 0.12
        assert all(response.is_anomaly[200:])
        # The detector's scores are the learner's own (the graph ran, not a stand-in).
        learner = DistanceToMeanLearner(floor=1e-3).fit(normal.to_numpy(dtype=np.float32))
        np.testing.assert_allclose(response.scores, learner.anomaly_scores(rows)[0], rtol=1e-4)
        assert response.kind == KIND
        assert [len(e.features) for e in response.explanations] == [1] * len(rows)
    finally:
        trainer.close()
        detector.close()


def test_a_registered_kinds_parameters_are_checked_when_the_spec_is_read(toy_kind, tmp_path):
    (tmp_path / "dataset.yaml").write_text(f"sources: [{{path: a.csv}}]\nmodel: {{kind: {KIND}, params: {{k: 3}}}}\n")
    with pytest.raises(SpecError) as refused:
        load_spec(tmp_path)
    assert f"unknown {KIND} parameters ['k']; allowed: ['floor', 'seed']" in str(refused.value)


def test_a_kind_nobody_registered_is_a_spec_error(tmp_path):
    (tmp_path / "dataset.yaml").write_text(f"sources: [{{path: a.csv}}]\nmodel: {{kind: {KIND}}}\n")
    with pytest.raises(SpecError, match=f"unknown model kind '{KIND}'"):
        load_spec(tmp_path)


def test_a_taken_kind_cannot_be_registered_twice(toy_kind):
    class Impostor(DistanceToMeanLearner):
        pass

    with pytest.raises(ValueError, match=f"model kind '{KIND}' is served by DistanceToMeanLearner already"):
        register_learner(Impostor)
    onnx.checker.check_model(onnx.load_from_string(toy_kind(floor=1.0).fit(np.eye(3)).to_onnx()))


PLUGIN = '''
import numpy as np
from oddity.trainer.learners import AnomalyLearner


class FarFromZeroLearner(AnomalyLearner):
    kind = "far_from_zero"

    def fit(self, x, y=None, progress=None):
        return self

    def anomaly_scores(self, x):
        return np.abs(x).sum(axis=1), None
'''


def test_a_separate_distribution_adds_a_kind_through_its_entry_point(tmp_path, monkeypatch):
    """A package that declares `far_from_zero = module:Class` under `oddity.learners` (and one
    whose entry point is broken) on the path: the trainer's start-up loads the first and
    leaves the other out."""
    (tmp_path / "oddity_far_from_zero.py").write_text(PLUGIN)
    info = tmp_path / "oddity_far_from_zero-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: oddity-far-from-zero\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[oddity.learners]\nfar_from_zero = oddity_far_from_zero:FarFromZeroLearner\n"
        "missing_kind = oddity_far_from_zero:NoSuchLearner\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert load_entry_points() == ["far_from_zero"]
        assert learner_class("far_from_zero").__name__ == "FarFromZeroLearner"
        assert "missing_kind" not in kinds()
    finally:
        unregister_learner("far_from_zero")
