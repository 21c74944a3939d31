"""The trainer's commands against a real trainer and detector: `train --follow` shows the job
to its final state and exits 1 when it fails; `status` and `history` print what the trainer
reports (JSON that parses, tables for people); `threshold` and `rollback` change what the
trainer reports, by model name or dataset."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from oddity.client import DetectorClient, TrainerClient
from tests.client.conftest import invoke, stdout_of
from tests.conftest import start_detector, start_trainer
from tests.support import datasets


def manual_spec(**overrides) -> dict:
    overrides.setdefault("retrain", {"policy": "manual"})
    return datasets.autoencoder_spec(model={"kind": "autoencoder", "params": {"epochs": 4}}, **overrides)


def grades_spec() -> dict:
    return {
        "sources": [{"path": "*.csv"}],
        "label": "grade",
        "score_column": "quality",
        "model": {
            "kind": "mlp_classifier",
            "params": {"epochs": 40, "hidden": [16], "patience": 0, "learning_rate": 0.01},
        },
        "retrain": {"policy": "manual"},
    }


def grades_frame() -> pd.DataFrame:
    rows = datasets.sensor_frame(300, d=4)
    rows["quality"] = rows["sensor_0"] * 10 + 50
    rows["grade"] = np.where(rows["sensor_0"] > 0, "good", "poor")
    return rows


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-cli")
    data_volume, repository = root / "data", root / "models"
    (data_volume / "datasets").mkdir(parents=True)
    repository.mkdir()
    detector = start_detector(repository)
    trainer = start_trainer(data_volume, repository, detectors=[detector.server.target])
    for name in ("plant", "follow", "people", "again"):
        datasets.write_dataset(data_volume, name, manual_spec(), {"rows.csv": datasets.sensor_frame(300)})
    steer = manual_spec(name="steer-model")  # a model named apart from its dataset
    datasets.write_dataset(data_volume, "steer", steer, {"rows.csv": datasets.sensor_frame(300)})
    datasets.write_dataset(data_volume, "broken", manual_spec(), {"rows.csv": b""})
    datasets.write_dataset(data_volume, "grades", grades_spec(), {"rows.csv": grades_frame()})
    trainer.detector = detector  # the tests that score reach it through the trainer's handle
    yield trainer
    trainer.close()
    detector.close()


@pytest.fixture(scope="module")
def sdk(stack):
    with TrainerClient(stack.server.target, timeout=30) as client:
        yield client


def train_to_end(sdk: TrainerClient, dataset: str, **fields):
    job = sdk.train(dataset, **fields)
    *_, last = sdk.watch_job(job.id, timeout=180)
    assert last.state == "succeeded", last.message
    return last


@pytest.fixture(scope="module")
def trained(sdk):
    return train_to_end(sdk, "plant")


def test_train_follow_json_prints_every_update_and_ends_with_the_final_state(cli, stack, sdk):
    result = invoke(cli, "train", "follow", "--follow", "--json", "--trainer", stack.server.target)
    assert result.exit_code == 0, result.stderr
    updates = [json.loads(line) for line in result.stdout.splitlines()]
    final = updates[-1]
    assert final == sdk.job(final["id"]).to_dict()
    assert (final["state"], final["phase"], final["published_version"]) == ("succeeded", "done", 1)
    assert {"training", "done"} <= {u["phase"] for u in updates}
    epochs = [u["epoch"] for u in updates if u["phase"] == "training" and u["epoch"]]
    assert epochs == sorted(epochs) and epochs[-1] == 4


def test_train_follow_for_people_ends_with_what_was_published(cli, stack):
    result = invoke(cli, "train", "people", "-f", "--trainer", stack.server.target)
    assert result.exit_code == 0, result.stderr
    assert re.fullmatch(r"job \S+ succeeded: version 1 published\n", result.stdout)
    assert "people: training" in result.stderr


def test_train_without_follow_returns_the_started_job(cli, stack, sdk):
    train_to_end(sdk, "again")
    result = invoke(cli, "train", "again", "--force", "--json", "--trainer", stack.server.target)
    assert result.exit_code == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["dataset"], job["trigger"]) == ("again", "api")
    *_, last = sdk.watch_job(job["id"], timeout=180)
    assert (last.state, last.published_version) == ("succeeded", 2)


def test_a_job_that_fails_exits_1_with_its_reason(cli, stack):
    result = invoke(cli, "train", "broken", "--follow", "--trainer", stack.server.target)
    assert result.exit_code == 1
    last = result.stderr.splitlines()[-1]
    assert re.fullmatch(r"error: job \S+ failed: .*rows\.csv is empty.*", last), last

    as_json = invoke(cli, "train", "broken", "--follow", "--json", "--trainer", stack.server.target)
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout.splitlines()[-1])["state"] == "failed"


def test_an_unknown_dataset_exits_1_with_one_line(cli, stack):
    result = invoke(cli, "train", "nope", "--trainer", stack.server.target)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: trainer at {stack.server.target}: NOT_FOUND: ")


def test_status_prints_what_the_trainer_reports(cli, stack, sdk, trained):
    result = invoke(cli, "status", "--dataset", "plant", "--json", "--trainer", stack.server.target)
    assert result.exit_code == 0, result.stderr
    (status,) = json.loads(result.stdout)
    assert status == sdk.status("plant")[0].to_dict()
    assert (status["dataset"], status["model"], status["kind"], status["valid"]) == (
        "plant",
        "plant",
        "autoencoder",
        True,
    )
    assert (status["live_version"], status["samples"]) == (1, 300)
    every = json.loads(invoke(cli, "status", "--json", "--trainer", stack.server.target).stdout)
    assert sorted(s["dataset"] for s in every) == ["again", "broken", "follow", "grades", "people", "plant", "steer"]

    table = invoke(cli, "status", "--trainer", stack.server.target)
    assert table.exit_code == 0
    assert "plant" in table.stdout and "autoencoder" in table.stdout


def test_history_filters_by_dataset_type_and_time(cli, stack, trained):
    target = ("--trainer", stack.server.target)
    published = json.loads(invoke(cli, "history", "-d", "plant", "--type", "published", "--json", *target).stdout)
    assert [e["event_type"] for e in published][:1] == ["PUBLISHED"]
    assert published[0]["details"]["version"] == 1 and published[0]["dataset"] == "plant"
    assert {e["event_type"] for e in published} == {"PUBLISHED"}

    recent = json.loads(invoke(cli, "history", "--since", "1h", "--json", *target).stdout)
    assert {"TRAINING_STARTED", "TRAINING_COMPLETED", "PUBLISHED"} <= {e["event_type"] for e in recent}
    assert json.loads(invoke(cli, "history", "--since", "2999-01-01T00:00:00+00:00", "--json", *target).stdout) == []

    people = invoke(cli, "history", "--dataset", "plant", *target)
    assert people.exit_code == 0 and "PUBLISHED" in people.stdout
    bad = invoke(cli, "history", "--since", "yesterday-ish", *target)
    assert bad.exit_code == 2


def test_threshold_and_rollback_change_what_the_trainer_reports(cli, stack, sdk):
    train_to_end(sdk, "steer")
    train_to_end(sdk, "steer", force=True)
    target = ("--trainer", stack.server.target)

    moved = invoke(cli, "threshold", "steer-model", "--percentile", "80", "--json", *target)  # by model name
    assert moved.exit_code == 0, moved.stderr
    assert json.loads(stdout_of(moved))["version"] == 3
    (status,) = sdk.status("steer")
    assert (status.threshold_override, status.live_version) == (80.0, 3)
    assert {g.threshold_percentile for g in status.live_groups} == {80.0}

    rolled = invoke(cli, "rollback", "steer", "--version", "1", "--json", *target)  # by dataset
    assert rolled.exit_code == 0, rolled.stderr
    assert {k: v for k, v in json.loads(stdout_of(rolled)).items() if k != "next"} == {"version": 4, "restored_from": 1}
    (status,) = sdk.status("steer")
    assert (status.live_version, status.pinned_version) == (4, 4)

    cleared = invoke(cli, "threshold", "steer", "--percentile", "0", *target)
    assert cleared.exit_code == 0, cleared.stderr
    assert cleared.stdout.startswith("version 5 serves with the new threshold; ")
    assert sdk.status("steer")[0].threshold_override == 0.0

    assert invoke(cli, "threshold", "steer", "--percentile", "100", *target).exit_code == 2
    unknown = invoke(cli, "rollback", "nothing-such", *target)
    assert unknown.exit_code == 1
    assert unknown.stderr == (
        f"error: trainer at {stack.server.target}: no dataset trains a model named 'nothing-such'\n"
    )


@pytest.mark.slow
def test_train_follow_shows_losses_and_figures_per_epoch_and_the_regression_head_scores(cli, stack):
    result = invoke(cli, "train", "grades", "--follow", "--json", "--trainer", stack.server.target)
    assert result.exit_code == 0, result.stderr
    updates = [json.loads(line) for line in result.stdout.splitlines()]
    epochs = [u for u in updates if u["phase"] == "training" and u["train_loss"] > 0]
    # Every epoch ran; the stream coalesces a burst of changes, so a watcher may miss the last
    # training snapshot, never see epochs go back.
    assert (updates[-1]["state"], updates[-1]["epoch"], updates[-1]["total_epochs"]) == ("succeeded", 40, 40)
    seen = [u["epoch"] for u in epochs]
    assert len(seen) > 1 and seen == sorted(set(seen))
    assert all(u["validation_loss"] > 0 and u["epoch_metrics"] for u in epochs)
    people = invoke(cli, "train", "grades", "-f", "--force", "--trainer", stack.server.target)
    assert people.exit_code == 0, people.stderr
    with DetectorClient(stack.detector.server.target) as detector:
        rows = grades_frame().head(5)
        frame = detector.detect("grades", rows).to_frame()
    assert list(frame.columns[:2]) == ["predicted_class", "confidence"]
    assert frame["predicted_score"].notna().all() and len(frame) == 5
    status = invoke(cli, "status", "--dataset", "grades", "--json", "--trainer", stack.server.target)
    evaluation = json.loads(status.stdout)[0]["live_groups"][0]["evaluation"]
    assert evaluation["rows"] == 60 and evaluation["balanced_accuracy"] > 0.9  # one feature decides the grade
    assert {c["label"] for c in evaluation["classes"]} == {"good", "poor"}
    table = invoke(cli, "status", "--dataset", "grades", "--trainer", stack.server.target)
    assert "classifiers, on held-out rows" in stdout_of(table)


def test_no_trainer_is_reported_at_once_naming_oddity_up(cli):
    """A refused connection is told at once (exit 3), not after every retry, and says what starts one."""
    result = invoke(cli, "status", "--trainer", "127.0.0.1:1")
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        "error: trainer at 127.0.0.1:1: cannot connect; `oddity up` starts the local services "
        "(no connection to 127.0.0.1:1: is the trainer running there, with TLS settings that match?)"
    )


def test_status_tells_the_threshold_served_and_a_failing_dataset(stack, sdk):
    """After a rollback the live version serves the restored version's percentile while the
    override waits for the next version; a dataset whose last run failed is failing, not ready."""
    from oddity.cli.training import _served_percentile, _state

    trained = train_to_end(sdk, "people", force=True).published_version
    assert sdk.set_threshold("people", 98).version == trained + 1
    assert sdk.rollback("people", trained).version == trained + 2
    (people,) = sdk.status("people")
    assert (_served_percentile(people), people.threshold_override, _state(people)) == ("p95", 98.0, "ready")

    job = sdk.train("broken")
    *_, last = sdk.watch_job(job.id, timeout=180)
    assert last.state == "failed"
    (broken,) = sdk.status("broken")
    assert (_state(broken), _served_percentile(broken)) == ("failing (oddity train tries again)", None)


def test_samples_survive_a_restart(tmp_path):
    data_volume, repository = tmp_path / "data", tmp_path / "models"
    (data_volume / "datasets").mkdir(parents=True)
    repository.mkdir()
    datasets.write_dataset(data_volume, "kept", manual_spec(), {"rows.csv": datasets.sensor_frame(300)})
    trainer = start_trainer(data_volume, repository)
    try:
        with TrainerClient(trainer.server.target, timeout=30) as client:
            train_to_end(client, "kept")
    finally:
        trainer.close()
    restarted = start_trainer(data_volume, repository)
    try:
        with TrainerClient(restarted.server.target, timeout=30) as client:
            (kept,) = client.status("kept")
        assert (kept.live_version, kept.samples) == (1, 300)
    finally:
        restarted.close()
