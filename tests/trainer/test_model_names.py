"""One dataset folder per model name: a second folder whose dataset.yaml names a model another
folder already has is invalid, says which folder has the name, and never publishes into it;
the first keeps training and serving, with no retraining back and forth."""

import pytest

from oddity.common import bundle
from tests.conftest import start_trainer
from tests.support import datasets
from tests.support.waiting import wait_for
from tests.trainer.scans import after_scans
from tests.trainer.test_operator_decisions import SCAN_SECONDS, spec, status


@pytest.mark.slow
def test_a_second_folder_naming_the_same_model_is_invalid_and_publishes_nothing(data_volume, repository):
    datasets.write_dataset(data_volume, "a", spec(), {"rows.csv": datasets.sensor_frame(400)})
    trainer = start_trainer(data_volume, repository, scan_interval_seconds=SCAN_SECONDS)
    try:
        wait_for(lambda: bundle.list_versions(repository / "a") == [1], what="version 1 of a")
        datasets.write_dataset(
            data_volume, "b", {**spec(), "name": "a"}, {"rows.csv": datasets.sensor_frame(400, seed=9)}
        )
        wait_for(lambda: not status(trainer, "b").valid, what="b found invalid")
        assert status(trainer, "b").error == (
            "model name 'a' is already used by the dataset folder 'a'; give b/dataset.yaml another name"
        )
        for _ in range(3):
            after_scans(trainer)
        assert bundle.list_versions(repository / "a") == [1]
        assert status(trainer, "a").valid and status(trainer, "a").live_version == 1
    finally:
        trainer.close()


def test_the_folder_that_had_the_name_first_keeps_it(data_volume, repository):
    from prometheus_client import CollectorRegistry

    from oddity.trainer.datasets import Datasets
    from oddity.trainer.metrics import TrainerMetrics

    datasets.write_dataset(
        data_volume, "z-first", {**spec(), "name": "shared"}, {"rows.csv": datasets.sensor_frame(50)}
    )
    catalogue = Datasets(data_volume / "datasets", repository, TrainerMetrics(CollectorRegistry()))
    catalogue.refresh()
    datasets.write_dataset(
        data_volume, "a-second", {**spec(), "name": "shared"}, {"rows.csv": datasets.sensor_frame(50)}
    )
    catalogue.refresh()
    assert (catalogue.get("z-first").spec.name, catalogue.get("a-second").spec) == ("shared", None)
    assert catalogue.get("a-second").error.startswith(
        "model name 'shared' is already used by the dataset folder 'z-first'"
    )
