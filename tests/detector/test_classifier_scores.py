"""A classifier with a regression head served by the detector: each row's class, calibrated
probabilities and predicted score, for one large request and for concurrent one-row
requests that the micro-batcher joins into one ONNX Runtime call and splits again; a version
whose manifest names a score column its graph lacks is refused."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from oddity.common import bundle
from oddity.common.bundle.contract import PREDICTED_SCORE_OUTPUT
from oddity.trainer import bundle_writer
from oddity.trainer.learners import make_learner
from oddity.trainer.validation import onnx_session
from oddity.v1 import detector_pb2, manifest_pb2
from tests.conftest import start_detector
from tests.support.client import detect_request
from tests.support.waiting import wait_for

D = 6


def publish_classifier(repository, name: str, graph: bytes, classes: list[str]) -> None:
    manifest = manifest_pb2.ModelManifest(
        name=name,
        kind="mlp_classifier",
        task=manifest_pb2.MODEL_TASK_CLASSIFICATION,
        input_dimension=D,
        class_labels=classes,
        score_column="quality",
        dataset=name,
    )
    manifest.groups.add(name=bundle.ALL_GROUP, onnx_file="all.onnx", status=manifest_pb2.GROUP_STATUS_ACTIVE)
    bundle_writer.publish_version(repository, manifest, {"all.onnx": graph})


def status(detector, model: str) -> detector_pb2.ModelStatus:
    models = {m.name: m for m in detector.stub.ListModels(detector_pb2.ListModelsRequest()).models}
    return models.get(model, detector_pb2.ModelStatus())


def fitted():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(600, D)).astype(np.float32)
    labels = np.where(rows[:, 0] > 0.3, "good", "poor")
    quality = 50 + 20 * rows[:, 1]
    return make_learner("mlp_classifier", {"epochs": 8}).fit(rows, labels, targets=quality)


def test_classes_probabilities_and_scores_per_row(repository):
    learner = fitted()
    graph = learner.to_onnx()
    publish_classifier(repository, "quality", graph, [str(c) for c in learner.classes_])
    # The same classifier without its head's output, but a manifest that promises it.
    headless = onnx.load_from_string(graph)
    kept = [o for o in headless.graph.output if o.name != PREDICTED_SCORE_OUTPUT]
    del headless.graph.output[:]
    headless.graph.output.extend(kept)
    publish_classifier(repository, "broken", headless.SerializeToString(), [str(c) for c in learner.classes_])

    detector = start_detector(repository)
    try:
        wait_for(lambda: status(detector, "quality").serving_version == 1, what="the classifier serving")
        refused = wait_for(lambda: status(detector, "broken").rejected_versions.get(1), what="the broken one refused")
        assert "no 'predicted_score' output" in refused and status(detector, "broken").serving_version == 0
        rows = np.random.default_rng(1).normal(size=(40, D)).astype(np.float32)
        session = onnx_session(graph)
        expected_probabilities, expected_scores = session.run(
            [bundle.PROBABILITIES_OUTPUT, PREDICTED_SCORE_OUTPUT], {bundle.INPUT_NAME: rows}
        )
        response = detector.stub.Detect(detect_request("quality", rows))
        np.testing.assert_allclose(response.predicted_scores, expected_scores, rtol=1e-6)
        served = np.frombuffer(response.probabilities.raw_data, np.float32).reshape(rows.shape[0], 2)
        np.testing.assert_allclose(served, expected_probabilities, atol=1e-7)
        assert list(response.predicted_classes) == [response.class_labels[i] for i in served.argmax(axis=1)]

        # One row per request, all at once: joined into batches, split again row by row.
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda row: detector.stub.Detect(detect_request("quality", row)), rows))
        np.testing.assert_allclose([a.predicted_scores[0] for a in answers], expected_scores, rtol=1e-6)
        assert all(len(a.predicted_scores) == 1 for a in answers)

    finally:
        detector.close()
