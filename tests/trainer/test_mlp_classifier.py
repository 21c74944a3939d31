"""The mlp_classifier kind on its own: temperature scaling repairs probabilities that the
training objective left miscalibrated, and the exported graph serves exactly the calibrated
probabilities; a fit interrupted after a checkpoint goes on from it and ends as an
uninterrupted one; checkpoints are read as tensors only; its parameters are checked when the
spec is read."""

import pickle

import numpy as np
import pytest
import torch

from oddity.common import bundle
from oddity.common.bundle.contract import PREDICTED_SCORE_OUTPUT
from oddity.trainer.checkpoints import CheckpointStore
from oddity.trainer.classifier_evaluation import expected_calibration_error
from oddity.trainer.learners import make_learner
from oddity.trainer.spec import SpecError, load_spec
from oddity.trainer.validation import onnx_probabilities, onnx_session
from tests.trainer.labelled_data import FEATURES, defects, graded_scans


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def test_temperature_scaling_lowers_the_calibration_error_and_is_folded_into_the_graph():
    rows, labels = defects(800, seed=0)
    # Focal loss trains for the hard rows and leaves every probability too cautious.
    learner = make_learner("mlp_classifier", {"epochs": 40, "focal_gamma": 2.0}).fit(rows, labels)
    held_out, truth_labels = defects(5000, seed=100)  # never seen, not even for the temperature
    truth = np.searchsorted(learner.classes_, truth_labels)

    before = expected_calibration_error(learner.predict_proba(held_out, calibrated=False), truth)
    session = onnx_session(learner.to_onnx())
    served = onnx_probabilities(session, held_out)
    after = expected_calibration_error(served, truth)
    assert learner.temperature_ < 1.0  # too cautious: the temperature sharpens
    assert after < before / 2, f"ECE {before:.4f} -> {after:.4f}"

    # The graph's probabilities are softmax(logits / T) of the torch model.
    calibrated = softmax(learner.logits(held_out).astype(np.float64) / learner.temperature_)
    np.testing.assert_allclose(served, calibrated, atol=1e-5, rtol=0)
    np.testing.assert_allclose(served, learner.predict_proba(held_out), atol=1e-5, rtol=0)
    labels_out = session.run([bundle.LABEL_OUTPUT], {bundle.INPUT_NAME: held_out})[0]
    np.testing.assert_array_equal(labels_out, served.argmax(axis=1))  # the class never changes


def test_the_regression_head_predicts_the_score_next_to_the_class():
    scans = graded_scans(seed=0)
    rows = scans[FEATURES].to_numpy(np.float32)
    learner = make_learner("mlp_classifier", {"epochs": 30}).fit(rows, scans.grade.to_numpy(), targets=scans.quality)
    fresh = graded_scans(scale=2.0, seed=7)
    session = onnx_session(learner.to_onnx())
    served = session.run([PREDICTED_SCORE_OUTPUT], {bundle.INPUT_NAME: fresh[FEATURES].to_numpy(np.float32)})[0]
    np.testing.assert_allclose(served, learner.predict_scores(fresh[FEATURES].to_numpy(np.float32)), atol=1e-3)
    error = np.mean(np.abs(served - fresh.quality.to_numpy()))
    assert error < 8.0, f"mean absolute error {error:.2f} on a 0-100 score"  # the spread within a grade is 20


PARAMS = {
    "epochs": 24,
    "checkpoint_every": 5,
    "lr_schedule": "plateau",
    "patience": 6,
    "sampler": "balanced",
    "label_smoothing": 0.05,
}


class Killed(Exception):
    pass


@pytest.mark.slow
def test_a_fit_interrupted_after_a_checkpoint_resumes_from_it_and_ends_as_an_uninterrupted_one(tmp_path):
    scans = graded_scans(seed=1)
    rows, labels, scores = scans[FEATURES].to_numpy(np.float32), scans.grade.to_numpy(), scans.quality.to_numpy()
    whole = make_learner("mlp_classifier", PARAMS).fit(rows, labels, targets=scores)
    assert whole.epochs_run_ > 12  # the interruption below falls inside the run

    checkpoints = CheckpointStore(tmp_path / "checkpoints").job("job1")

    def kill_at_epoch_12(epoch, total, loss, figures=None):
        if epoch == 12:
            raise Killed

    with pytest.raises(Killed):
        make_learner("mlp_classifier", PARAMS).fit(
            rows, labels, kill_at_epoch_12, targets=scores, checkpoints=checkpoints.group("all")
        )
    told = []
    resumed = make_learner("mlp_classifier", PARAMS).fit(
        rows, labels, targets=scores, checkpoints=checkpoints.group("all", told.append)
    )
    assert told == [10] and resumed.resumed_from_epoch_ == 10  # the last checkpoint before epoch 12
    assert resumed.epochs_run_ == whole.epochs_run_ and resumed.best_epoch_ == whole.best_epoch_
    assert resumed.history_ == whole.history_  # every epoch's figures, the first ten from the checkpoint
    assert resumed.temperature_ == whole.temperature_
    np.testing.assert_array_equal(resumed.predict_proba(rows), whole.predict_proba(rows))

    # A checkpoint made for other rows is not used: training starts over.
    other = make_learner("mlp_classifier", PARAMS).fit(
        rows[:-1], labels[:-1], targets=scores[:-1], checkpoints=checkpoints.group("all")
    )
    assert other.resumed_from_epoch_ == 0


class Payload:
    """Stands for anything but tensors and plain containers in a checkpoint file."""

    def __reduce__(self):
        return (print, ("a checkpoint ran code",))


def test_checkpoints_are_read_as_tensors_only(tmp_path, capsys):
    group = CheckpointStore(tmp_path / "checkpoints").job("job1").group("all")
    group.save("key", 5, {"weights": torch.ones(3), "history": [{"epoch": 1.0}]})
    epoch, state = group.load("key")
    assert epoch == 5 and torch.equal(state["weights"], torch.ones(3))
    assert group.load("another key") is None

    # A file holding a pickled object that runs code when unpickled is refused, not run.
    with group.path.open("wb") as f:
        torch.save({"format": 1, "key": "key", "epoch": 5, "state": {"x": Payload()}}, f, pickle_module=pickle)
    assert group.load("key") is None
    assert "a checkpoint ran code" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ({"kind": "mlp_classifier", "params": {"epochs": 0}}, {}, "epochs: Input should be greater than or equal to 1"),
        ({"kind": "mlp_classifier", "params": {"lr_schedule": "step"}}, {}, "lr_schedule: Input should be"),
        ({"kind": "mlp_classifier", "params": {"sampler": "oversample"}}, {}, "sampler: Input should be"),
        ({"kind": "mlp_classifier", "params": {"depth": 3}}, {}, "unknown mlp_classifier parameters ['depth']"),
        ({"kind": "random_forest"}, {"score_column": "quality"}, "score_column needs a model kind with a regression"),
        ({"kind": "mlp_classifier"}, {"score_column": "grade"}, "score_column and label must be different"),
    ],
)
def test_parameters_are_checked_when_the_spec_is_read(tmp_path, model, extra, message):
    import yaml

    spec = {"sources": [{"path": "scans.csv"}], "label": "grade", "model": model, **extra}
    (tmp_path / "dataset.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError) as error:
        load_spec(tmp_path)
    assert message in str(error.value)
