"""A classifier over images: drawings labelled with the child's stage (in a metadata CSV with
the age as a score column, or as one subfolder per stage) are embedded by the embedder,
trained as mlp_classifier and served by the detector's DetectImages: the stage, calibrated
probabilities and the predicted age, through the embedder model the manifest names."""

import numpy as np
import pandas as pd
import pytest
import yaml

from oddity.v1 import detector_pb2, trainer_pb2
from tests.conftest import start_detector, start_embedder, start_trainer
from tests.support import drawings
from tests.support.servers import wait_models
from tests.support.waiting import wait_for
from tests.trainer.test_supervised import serving_version, train

STAGES = {"early": (3.0, 6.0), "middle": (6.0, 9.0), "late": (9.0, 12.0)}
PER_STAGE = 30
PARAMS = {"epochs": 30, "hidden": [32]}


def write_drawings(volume) -> None:
    """The same drawings twice: `staged` (metadata CSV: file, stage, age) and `folders`
    (images/<stage>/<file>)."""
    rng = np.random.default_rng(3)
    staged, folders = volume / "datasets" / "staged", volume / "datasets" / "folders"
    rows = []
    for stage, (low, high) in STAGES.items():
        (staged / "images").mkdir(parents=True, exist_ok=True)
        (folders / "images" / stage).mkdir(parents=True)
        for i, age in enumerate(rng.uniform(low, high, PER_STAGE)):
            picture = drawings.drawing(age, rng)
            (staged / "images" / f"{stage}{i}.png").write_bytes(picture)
            (folders / "images" / stage / f"{i}.png").write_bytes(picture)
            rows.append({"file_name": f"{stage}{i}.png", "stage": stage, "age": round(float(age), 1)})
    pd.DataFrame(rows).to_csv(staged / "metadata.csv", index=False)
    common = {"embedder": {"model": "vit"}, "label": "stage", "min_samples": 40, "retrain": {"policy": "manual"}}
    (staged / "dataset.yaml").write_text(
        yaml.safe_dump(
            {
                "images": {"path": "images", "metadata": "metadata.csv"},
                "score_column": "age",
                "model": {"kind": "mlp_classifier", "params": PARAMS},
                **common,
            }
        )
    )
    (folders / "dataset.yaml").write_text(
        yaml.safe_dump(
            {
                "images": {"path": "images", "folder_column": "stage"},
                "model": {"kind": "mlp_classifier", "params": PARAMS},
                **common,
            }
        )
    )


@pytest.fixture
def services(shared_encoders, data_volume, repository):
    embedder = start_embedder(shared_encoders.cache_dir, shared_encoders.only("vit"))
    wait_models(embedder, timeout=120)
    detector = start_detector(repository, embedder=embedder.server.target)
    trainer = start_trainer(
        data_volume, repository, embedder=embedder.server.target, detectors=[detector.server.target]
    )
    yield trainer, detector
    trainer.close()
    detector.close()
    embedder.close()


@pytest.mark.slow
def test_an_image_classifier_is_trained_through_the_embedder_and_served_by_detect_images(services, data_volume):
    trainer, detector = services
    write_drawings(data_volume)
    for name in ("staged", "folders"):
        final = train(trainer, name)[-1]
        assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.message
        wait_for(lambda name=name: serving_version(detector, name) == 1, what=f"{name} in the detector")

    rng = np.random.default_rng(99)
    ages = [4.0, 7.5, 11.0]
    request = detector_pb2.DetectImagesRequest(model="staged", images=[drawings.drawing(a, rng) for a in ages])
    answer = detector.stub.DetectImages(request)
    result = answer.result
    assert result.kind == "mlp_classifier" and sorted(result.class_labels) == sorted(STAGES)
    assert set(result.predicted_classes) <= set(STAGES) and len(result.predicted_classes) == len(ages)
    probabilities = np.frombuffer(result.probabilities.raw_data, np.float32).reshape(len(ages), len(STAGES))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert len(result.predicted_scores) == len(ages)  # the age, next to the stage
    assert all(0.0 < age < 15.0 for age in result.predicted_scores)
    manifest = detector.stub.GetModel(detector_pb2.GetModelRequest(model="staged")).manifest
    assert manifest.embedding.model == "vit" and manifest.score_column == "age"
    assert answer.embedder_model_id == manifest.embedding.model_id

    # One subfolder per stage: the folder names are the classes; no score column, no scores.
    folders = detector.stub.DetectImages(detector_pb2.DetectImagesRequest(model="folders", images=request.images))
    assert sorted(folders.result.class_labels) == sorted(STAGES) and not folders.result.predicted_scores
