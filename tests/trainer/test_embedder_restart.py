"""Training waits out an embedder restart: an image dataset is being embedded when its
embedder stops; a new embedder comes up on the same address a moment later; the job goes
on from where it was and publishes its model. A job waiting for the embedder still ends at
once when the trainer stops."""

import json
import socket
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from oddity.common import bundle
from oddity.embedder.app import EmbedderApp
from oddity.embedder.settings import EmbedderSettings
from oddity.trainer.job_control import STOPPED_MESSAGE
from oddity.v1 import embedder_pb2_grpc, trainer_pb2
from tests.conftest import LOOPBACK, ServiceHandle, start_trainer
from tests.support import drawings
from tests.support.servers import wait_models
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow  # a scenario through real services; `-m "not slow"` leaves it out

ITEMS = 160
BATCH = 2  # 80 Embed calls
DELAY_MS = 50  # each call waits this long for company in the embedder's batcher: >= 4 s of embedding


def start_embedder_on(port: int, cache_dir, models) -> ServiceHandle:
    settings = EmbedderSettings(
        **{**LOOPBACK, "port": port},
        cache_dir=cache_dir,
        models=models,
        default_model="vit",
        max_batch_delay_ms=DELAY_MS,
    )
    handle = ServiceHandle(EmbedderApp, settings, embedder_pb2_grpc.EmbedderStub)
    wait_models(handle, timeout=120)
    return handle


def write_drawings(folder, n: int) -> None:
    rng = np.random.default_rng(5)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, age in enumerate(rng.uniform(3, 12, n)):
        (folder / "images" / f"d{i:04d}.png").write_bytes(drawings.drawing(age, rng))
        rows.append({"file_name": f"d{i:04d}.png", "age": round(float(age), 1)})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    spec = {
        "images": {"path": "images", "metadata": "metadata.csv"},
        "embedder": {"model": "vit", "batch_size": BATCH},
        "model": {"kind": "autoencoder", "params": {"epochs": 20, "hidden": [16], "bottleneck": 4}},
        "min_samples": 50,
        "retrain": {"policy": "manual"},
        "validation": {"anomaly_rate": [0.0, 0.2]},
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture
def vit_models(shared_encoders):
    return shared_encoders.only("vit")


def test_a_job_waits_out_an_embedder_restart_and_publishes(shared_encoders, data_volume, repository, vit_models):
    write_drawings(data_volume / "datasets" / "drawings", ITEMS)
    first = start_embedder_on(0, shared_encoders.cache_dir, vit_models)
    port = first.server.port
    second = None
    trainer = start_trainer(data_volume, repository, embedder=f"127.0.0.1:{port}")
    try:
        job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset="drawings")).job
        for update in trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=60):
            assert update.job.state != trainer_pb2.JOB_STATE_FAILED, update.job.message
            if update.job.phase == "embedding":
                break
        # The first embedder has answered some batches of this job: stop it mid-embedding.
        before = wait_for(lambda: first.metric("oddity_embedder_items_total", model="vit"), 60, "a first batch")
        first.close()
        waiting = trainer.stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id)).job
        assert (waiting.state, waiting.phase) == (trainer_pb2.JOB_STATE_RUNNING, "embedding"), waiting.message
        time.sleep(1.0)  # the outage
        second = start_embedder_on(port, shared_encoders.cache_dir, vit_models)

        updates = list(trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=120))
        final = updates[-1].job
        assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.message
        assert final.published_version == 1
        assert bundle.list_versions(repository / "drawings") == [1]
        manifest = bundle.load_verified_version(repository, "drawings", 1).manifest
        assert manifest.embedding.model == "vit" and manifest.embedding.dimension == 32
        completed = trainer.stub.History(
            trainer_pb2.HistoryRequest(dataset="drawings", event_types=["TRAINING_COMPLETED"])
        ).events[-1]
        stats = completed.details["embedding"]
        assert (stats["items"], stats["embedded"], stats["cached"], stats["refused"]) == (ITEMS, ITEMS, 0, 0)
        assert completed.details["samples"] == ITEMS
        # Both embedders served part of this job: it crossed the restart.
        after = second.metric("oddity_embedder_items_total", model="vit")
        assert 0 < before < ITEMS and 0 < after < ITEMS
    finally:
        trainer.close()
        if second is not None:
            second.close()
        first.close()


def test_stopping_the_trainer_ends_a_job_that_waits_for_the_embedder(data_volume, repository):
    write_drawings(data_volume / "datasets" / "drawings", 10)
    with socket.socket() as s:  # no embedder here (yet): the job waits for one
        s.bind(("127.0.0.1", 0))
        nobody = f"127.0.0.1:{s.getsockname()[1]}"
    trainer = start_trainer(data_volume, repository, embedder=nobody, embedder_connect_timeout_seconds=120)
    try:
        job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset="drawings")).job
        for update in trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=60):
            if update.job.phase == "embedding":
                break
    finally:
        trainer.close()
    events = [json.loads(line) for line in (data_volume / ".oddity" / "history.jsonl").read_text().splitlines()]
    assert [e["event_type"] for e in events] == ["TRAINING_STARTED", "TRAINING_STOPPED"]
    assert events[-1]["message"] == STOPPED_MESSAGE
    assert not list((data_volume / ".oddity" / "running").glob("*.json"))
