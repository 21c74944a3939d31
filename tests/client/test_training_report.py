"""What a user sees of a training, against a real trainer: the detector a choosing kind picked
and why (GetStatus and `oddity status`, one line per group), the columns left out of the
features for holding no numbers (the history and the status), and `train --follow` counting
what each kind counts: epochs with their loss, members or steps with none."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest

from oddity.client import TrainerClient
from oddity.trainer.learners import register_learner, unregister_learner
from tests.client.conftest import invoke, stdout_of
from tests.conftest import ServiceHandle, start_trainer
from tests.support import datasets
from tests.trainer.test_learner_extension import DistanceToMeanLearner

CHOOSING_KIND = "fixed_choice"
CHOICE = "distance to the mean (standardized): the test's fixed choice"


class FixedChoiceLearner(DistanceToMeanLearner):
    """A kind that says what it chose, as auto does: always the same line."""

    kind = CHOOSING_KIND

    def selection(self) -> str:
        return CHOICE


def rows_with_text(n: int = 300):
    rows = datasets.sensor_frame(n, d=4)
    rows["city"] = [("Oslo", "Lima", "Pune")[i % 3] for i in range(n)]
    rows["note"] = "checked"  # text too, but excluded by the spec: not left out
    return rows


def spec(kind: str, **params) -> dict:
    return {
        "sources": [{"path": "*.csv"}],
        "features": {"exclude": ["note"]},
        "model": {"kind": kind, "params": params},
        "retrain": {"policy": "manual"},
    }


def routed(kind: str) -> dict:
    """Two groups by sensor_0 (a routing key, so no feature and not left out), and `all`."""
    return {**spec(kind), "routing": {"key": "sensor_0", "bounds": [-10, 0, 10]}, "min_samples": 50}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[ServiceHandle]:
    root = tmp_path_factory.mktemp("training-report")
    data_volume, repository = root / "data", root / "models"
    (data_volume / "datasets").mkdir(parents=True)
    repository.mkdir()
    register_learner(FixedChoiceLearner)
    datasets.write_dataset(data_volume, "chosen", routed(CHOOSING_KIND), {"rows.csv": rows_with_text()})
    datasets.write_dataset(data_volume, "auto", spec("auto"), {"rows.csv": datasets.sensor_frame(300, d=4)})
    datasets.write_dataset(data_volume, "knn", spec("knn"), {"rows.csv": datasets.sensor_frame(300, d=4)})
    autoencoder = spec("autoencoder", epochs=3, hidden=[8], bottleneck=2)
    datasets.write_dataset(data_volume, "epochs", autoencoder, {"rows.csv": datasets.sensor_frame(300, d=4)})
    trainer = start_trainer(data_volume, repository)
    try:
        yield trainer
    finally:
        trainer.close()
        unregister_learner(CHOOSING_KIND)


@pytest.fixture(scope="module")
def sdk(stack) -> Iterator[TrainerClient]:
    with TrainerClient(stack.server.target, timeout=30) as client:
        yield client


def train_to_end(sdk: TrainerClient, dataset: str) -> None:
    job = sdk.train(dataset, force=True)
    *_, last = sdk.watch_job(job.id, timeout=180)
    assert last.state == "succeeded", last.message


@pytest.fixture(scope="module")
def chosen(sdk):
    return train_to_end(sdk, "chosen")


@pytest.mark.slow
def test_status_says_what_a_choosing_kind_chose_per_group(cli, stack, sdk, chosen):
    groups = ["sensor_0_-10_0", "sensor_0_0_10", "all"]
    (status,) = sdk.status("chosen")
    assert [(g.group, g.selection) for g in status.live_groups] == [(group, CHOICE) for group in groups]

    table = invoke(cli, "status", "--dataset", "chosen", "--trainer", stack.server.target)
    assert table.exit_code == 0, table.stderr
    shown = [line for line in stdout_of(table).splitlines() if line.startswith("chosen · group ")]
    assert shown == [f"chosen · group {group}: {CHOICE}" for group in groups]


@pytest.mark.slow
def test_text_columns_left_out_of_the_features_are_named_in_the_history_and_the_status(cli, stack, sdk, chosen):
    (completed,) = sdk.history("chosen", "TRAINING_COMPLETED")
    assert (completed.details["left_out_columns"], completed.details["left_out_column_count"]) == (["city"], 1)
    assert list(completed.details["columns"]) == ["sensor_1", "sensor_2", "sensor_3"]

    (status,) = sdk.status("chosen")
    assert (status.left_out_columns, status.left_out_column_count) == (("city",), 1)
    table = invoke(cli, "status", "--dataset", "chosen", "--trainer", stack.server.target)
    assert "chosen: columns left out (not numeric): city\n" in stdout_of(table)


@pytest.mark.slow
def test_the_default_kind_reports_its_selection_field(cli, stack, sdk):
    """The field reaches GetStatus and `oddity status --json` for auto; what auto writes in it
    is auto's to test."""
    train_to_end(sdk, "auto")
    result = invoke(cli, "status", "--dataset", "auto", "--json", "--trainer", stack.server.target)
    (group,) = json.loads(stdout_of(result))[0]["live_groups"]
    assert isinstance(group["selection"], str) and group["members"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "unit", "shown"),
    [
        ("knn", "step", r"· step 1/1 "),
        ("auto", "member", r"· member (\d)/\1 "),
        ("epochs", "epoch", r"· epoch 3/3 · loss \d"),
    ],
    ids=["knn", "auto", "autoencoder"],
)
def test_follow_counts_what_the_kind_counts_with_a_loss_for_epochs_only(cli, stack, dataset, unit, shown):
    target = ("--trainer", stack.server.target)
    as_json = invoke(cli, "train", dataset, "--force", "--follow", "--json", *target)
    counted = [u for u in map(json.loads, stdout_of(as_json).splitlines()) if u["total_epochs"]]
    assert counted and {u["progress_unit"] for u in counted} == {unit}

    people = invoke(cli, "train", dataset, "--force", "--follow", *target)
    assert people.exit_code == 0, people.stderr
    final = people.stderr.splitlines()[-1]
    assert re.search(shown, final), final
    assert ("loss" in final) == (unit == "epoch")
