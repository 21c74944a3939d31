"""The must-show on a generated image library, through the real services: an embedder serving
the demo's small random-weight ViT, a trainer and a detector. The library (three subjects in
their scenes, with tags) is dropped as an image dataset with a `similarity:` section and
trained; then `Similar` returns items of the same subject first, the clusters recover the
subjects, and `SuggestTags` finds the true tags of held-out images. The figures are measured
as bench/similarity.py measures them (see its docstring) and printed."""

from dataclasses import asdict

import pytest

from bench.similarity import measure_library, train_library, write_library
from oddity.cli import demo_library
from oddity.cli.demo_encoder import small_vit
from oddity.embedder.models import ModelSource
from tests.conftest import start_detector, start_embedder, start_trainer
from tests.support.servers import wait_models

pytestmark = pytest.mark.slow  # a scenario through real services; `-m "not slow"` leaves it out

PER_SUBJECT = 40
HELD_OUT = 20  # per subject, and novel items
# The random-weight ViT sees the scene and the subject's colour far better than small details
# (glasses, a chimney, the sun): tag recall@3 measured 0.75 with this library and 0.78-0.80 with
# 80 items per subject (bench/README.md), so the bar sits below those figures.
TAG_RECALL = 0.7


@pytest.fixture
def stack(tmp_path, data_volume, repository):
    vit = {"vit": ModelSource(model_id=str(small_vit(tmp_path / "small-vit")), modality="image")}
    embedder = start_embedder(tmp_path / "cache", vit)
    wait_models(embedder, timeout=120)
    detector = start_detector(repository, embedder=embedder.server.target)
    trainer = start_trainer(
        data_volume, repository, embedder=embedder.server.target, detectors=[detector.server.target]
    )
    yield trainer, detector
    trainer.close()
    detector.close()
    embedder.close()


def test_similar_items_clusters_and_tags_recover_the_library_s_subjects(stack, data_volume):
    trainer, detector = stack
    library = write_library(data_volume, PER_SUBJECT)
    train_library(trainer.stub, detector.stub)
    held_out = demo_library.make_items(HELD_OUT, seed=1, prefix="held")
    novel = demo_library.make_items(HELD_OUT, seed=2, subjects=(demo_library.NOVEL_SUBJECT,))

    figures = measure_library(detector.stub, library, held_out, novel)
    print(asdict(figures))
    assert figures.precision_at_5 >= 0.9
    assert figures.ari >= 0.8
    assert figures.tag_recall_at_3 >= TAG_RECALL
