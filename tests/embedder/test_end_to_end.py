"""Drawings and texts end to end: trainer -> embedder -> detector on temporary volumes."""

import socket

import grpc
import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from oddity.common import bundle
from oddity.embedder.models import ModelSource
from oddity.v1 import detector_pb2, trainer_pb2
from tests.conftest import start_detector, start_embedder, start_trainer
from tests.support import drawings, encoders, models
from tests.support.servers import wait_models
from tests.trainer.test_robustness import run_job

pytestmark = pytest.mark.slow  # a scenario through real services; `-m "not slow"` leaves it out


def write_drawings(folder, ages, rng):
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    existing = len(list(images.iterdir()))
    rows = []
    for i, age in enumerate(ages, start=existing):
        name = f"d{i:04d}.png"
        (images / name).write_bytes(drawings.drawing(age, rng))
        rows.append({"file_name": name, "age": round(float(age), 1)})
    metadata = folder / "metadata.csv"
    frame = pd.DataFrame(rows)
    if metadata.exists():
        frame = pd.concat([pd.read_csv(metadata), frame])
    frame.to_csv(metadata, index=False)


@pytest.fixture
def stack(shared_encoders, data_volume, repository):
    embedder = start_embedder(shared_encoders.cache_dir, shared_encoders.models)
    wait_models(embedder, timeout=120)
    detector = start_detector(repository, embedder=embedder.server.target)
    trainer = start_trainer(
        data_volume, repository, detectors=[detector.server.target], embedder=embedder.server.target
    )
    yield embedder, detector, trainer
    trainer.close()
    detector.close()
    embedder.close()


def test_drawings_are_scored_against_their_age_group(stack, data_volume, repository):
    _, detector, trainer = stack
    rng = np.random.default_rng(0)
    folder = data_volume / "datasets" / "drawings"
    write_drawings(folder, rng.uniform(3, 12, 450), rng)
    spec = {
        "images": {"path": "images", "metadata": "metadata.csv"},
        "extra_features": ["age"],
        "routing": {"key": "age", "bounds": [3, 6, 9, 12], "all_group": True},
        "embedder": {"model": "vit"},
        "min_samples": 60,
        "retrain": {"policy": "manual"},
        "validation": {"anomaly_rate": [0.0, 0.2]},
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    job = run_job(trainer, "drawings")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    manifest = bundle.load_verified_version(repository, "drawings", 1).manifest
    assert manifest.embedding.model == "vit" and manifest.embedding.dimension == 32
    assert list(manifest.embedding.extra_features) == ["age"] and manifest.input_dimension == 33
    assert {g.name for g in bundle.active_groups(manifest)} == {"age_3_6", "age_6_9", "age_9_12", "all"}

    ages = rng.uniform(3, 12, 60)
    normal = [drawings.drawing(a, rng) for a in ages]
    odd = [drawings.unusual(rng, a) for a in ages]
    response = detector.stub.DetectImages(
        detector_pb2.DetectImagesRequest(model="drawings", images=normal + odd, routing_values=list(ages) + list(ages))
    )
    result = response.result
    assert response.embedder_model_id == manifest.embedding.model_id
    expected_groups = ["age_3_6" if a < 6 else "age_6_9" if a < 9 else "age_9_12" for a in ages]
    assert list(result.groups) == expected_groups * 2
    auc = roc_auc_score(np.r_[np.zeros(60), np.ones(60)], result.normalized_scores)
    print(f"drawings ROC-AUC with the tiny random test ViT: {auc:.3f}")
    assert auc >= 0.8
    assert np.mean(result.is_anomaly[60:]) > np.mean(result.is_anomaly[:60])

    # New drawings: only they are embedded, the rest comes from the cache.
    write_drawings(folder, rng.uniform(3, 12, 30), rng)
    assert run_job(trainer, "drawings").state == trainer_pb2.JOB_STATE_SUCCEEDED
    completed = trainer.stub.History(
        trainer_pb2.HistoryRequest(dataset="drawings", event_types=["TRAINING_COMPLETED"])
    ).events[-1]
    assert completed.details["embedding"]["embedded"] == 30 and completed.details["embedding"]["cached"] == 450


def test_unusual_sentences_score_above_ordinary_ones(stack, data_volume):
    _, detector, trainer = stack
    rng = np.random.default_rng(1)
    things = ["a house", "a red house", "a tall tree", "a yellow sun", "a family", "a dog", "a cat", "a garden"]
    extras = [
        "with a chimney",
        "under a blue sky",
        "next to a river",
        "with four windows",
        "in the rain",
        "with flowers",
        "on a hill",
        "holding hands",
    ]
    sentences = [f"The child drew {rng.choice(things)} {rng.choice(extras)}." for _ in range(400)]
    folder = data_volume / "datasets" / "captions"
    folder.mkdir()
    pd.DataFrame({"text": sentences}).to_csv(folder / "captions.csv", index=False)
    spec = {
        "texts": {"path": "captions.csv"},
        "embedder": {"model": "text"},
        "min_samples": 100,
        "retrain": {"policy": "manual"},
        "validation": {"anomaly_rate": [0.0, 0.2]},
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    job = run_job(trainer, "captions")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    ordinary = [f"The child drew {rng.choice(things)} {rng.choice(extras)}." for _ in range(30)]
    unusual = [
        "Quarterly revenue exceeded analyst expectations.",
        "The defendant filed a motion to dismiss.",
        "Install the kernel module before rebooting.",
        "Mix two eggs with flour and sugar.",
        "The central bank raised interest rates again.",
        "asdf qwer zxcv uiop",
        "Photosynthesis converts light into chemical energy.",
        "The server returned error 503.",
        "Sell all shares before the market closes.",
        "Tax forms are due on the fifteenth.",
    ]
    response = detector.stub.DetectImages(detector_pb2.DetectImagesRequest(model="captions", texts=ordinary + unusual))
    scores = np.array(response.result.normalized_scores)
    auc = roc_auc_score(np.r_[np.zeros(30), np.ones(10)], scores)
    assert auc >= 0.9, f"ROC-AUC {auc:.3f}"
    assert scores[30:].mean() > scores[:30].mean()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedder_down_or_different_is_refused(tmp_path, repository):
    # A model trained on the vectors of an embedder model at /weights/vit (4 values + age).
    fit = models.fit_pca_group(models.normal_rows(300, 5), components=2)
    models.publish_simple(repository, "pictures", fit, dimension=5)
    path = repository / "pictures" / "1" / bundle.MANIFEST_FILE
    manifest = bundle.read_manifest(path.parent)
    manifest.embedding.model, manifest.embedding.model_id = "vit", "/weights/vit"
    manifest.embedding.revision, manifest.embedding.dimension = "local", 4
    manifest.embedding.modality = "image"
    manifest.embedding.extra_features.append("age")
    path.write_text(bundle.manifest_to_json(manifest))

    # The detector waits for an embedder that is down up to its embedder deadline, then refuses.
    down = f"127.0.0.1:{free_port()}"
    detector = start_detector(repository, embedder=down, embedder_timeout_seconds=1.0)
    try:
        request = detector_pb2.DetectImagesRequest(
            model="pictures", images=[drawings.noise(np.random.default_rng(0))], routing_values=[5]
        )
        with pytest.raises(grpc.RpcError) as info:
            detector.stub.DetectImages(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details().startswith(f"embedder at {down}: DEADLINE_EXCEEDED")
    finally:
        detector.close()

    embedder = start_embedder(
        tmp_path / "cache", {"vit": ModelSource(model_id=str(encoders.tiny_vit(tmp_path / "vit")), modality="image")}
    )
    wait_models(embedder, timeout=120)
    detector = start_detector(repository, embedder=embedder.server.target)
    try:
        with pytest.raises(grpc.RpcError) as info:
            detector.stub.DetectImages(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "was trained on vectors of /weights/vit" in info.value.details()
    finally:
        detector.close()
        embedder.close()


def test_training_with_the_embedder_down_fails_with_the_reason(data_volume, repository):
    rng = np.random.default_rng(3)
    folder = data_volume / "datasets" / "offline"
    write_drawings(folder, rng.uniform(3, 12, 40), rng)
    spec = {"images": {"path": "images"}, "extra_features": ["age"], "retrain": {"policy": "manual"}}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    trainer = start_trainer(
        data_volume, repository, embedder=f"127.0.0.1:{free_port()}", embedder_connect_timeout_seconds=1
    )
    try:
        job = run_job(trainer, "offline")
        assert job.state == trainer_pb2.JOB_STATE_FAILED and "embedder at 127.0.0.1" in job.message
        assert trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="offline")).datasets[0].valid
    finally:
        trainer.close()
    assert bundle.list_versions(repository / "offline") == []
