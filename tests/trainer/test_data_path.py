"""Train(data_path=...) reads only a file of the dataset's own folder, like every other read:
never another dataset's file (by `..`, a volume-relative path, a symbolic link or a hard link),
never the trainer's state under `.oddity/`. The scan never takes `.oddity` (or any hidden
folder) as a dataset or as data, and a file hard-linked into a second dataset folder makes
that folder invalid, naming both."""

import os
import shutil

import grpc
import pytest
from prometheus_client import CollectorRegistry

from oddity.trainer.datasets import Datasets
from oddity.trainer.metrics import TrainerMetrics
from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets
from tests.trainer.test_robustness import run_job

OWN_ROWS, OTHER_ROWS, EXTRA_ROWS = 300, 250, 150


def spec(**overrides) -> dict:
    return {
        "sources": [{"path": "rows.csv"}],
        "model": {"kind": "knn"},
        "min_samples": 100,
        "retrain": {"policy": "manual"},
        **overrides,
    }


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """Datasets `a` (whose own `extra.csv` is no source) and `b`, `.oddity/history.jsonl`
    written by a first job, and a trainer serving them."""
    root = tmp_path_factory.mktemp("data_path")
    data_volume, repository = root / "data", root / "models"
    (data_volume / "datasets").mkdir(parents=True)
    repository.mkdir()
    datasets.write_dataset(
        data_volume,
        "a",
        spec(),
        {"rows.csv": datasets.sensor_frame(OWN_ROWS), "extra.csv": datasets.sensor_frame(EXTRA_ROWS, seed=5)},
    )
    datasets.write_dataset(data_volume, "b", spec(), {"rows.csv": datasets.sensor_frame(OTHER_ROWS, seed=7)})
    trainer = start_trainer(data_volume, repository)
    job = run_job(trainer, "b")
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
    assert (data_volume / ".oddity" / "history.jsonl").is_file()
    yield trainer, data_volume
    trainer.close()


def refused(trainer, data_path: str, dataset: str = "a") -> str:
    with pytest.raises(grpc.RpcError) as info:
        trainer.stub.Train(trainer_pb2.TrainRequest(dataset=dataset, data_path=data_path))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details()


def outside(data_path: str) -> str:
    return (
        f"data_path {data_path!r} leads outside the dataset folder (through '..', a symbolic link or "
        "another folder); it must name a file under 'datasets/a'"
    )


def hard_link(data_path: str, other: str) -> str:
    return (
        f"data_path {data_path!r} is a hard link to {other!r}, outside the dataset folder 'datasets/a'; "
        "a dataset reads only its own files (copy the file instead of linking it)"
    )


@pytest.mark.parametrize("data_path", ["../b/rows.csv", "datasets/b/rows.csv", "../../datasets/b/rows.csv"])
def test_another_datasets_file_is_refused(volume, data_path):
    trainer, _ = volume
    assert refused(trainer, data_path) == outside(data_path)


@pytest.mark.parametrize("data_path", ["../../.oddity/history.jsonl", ".oddity/history.jsonl"])
def test_the_trainers_history_is_refused(volume, data_path):
    trainer, _ = volume
    assert refused(trainer, data_path) == outside(data_path)


def test_a_symbolic_link_out_of_the_folder_is_refused(volume):
    trainer, data_volume = volume
    link = data_volume / "datasets" / "a" / "theirs.csv"
    link.symlink_to("../b/rows.csv")
    try:
        for data_path in ("theirs.csv", "datasets/a/theirs.csv"):
            assert refused(trainer, data_path) == outside(data_path)
    finally:
        link.unlink()


def test_a_hard_link_to_another_datasets_file_or_the_history_is_refused(volume):
    trainer, data_volume = volume
    folder = data_volume / "datasets" / "a"
    links = {
        "theirs.csv": data_volume / "datasets" / "b" / "rows.csv",
        "history.jsonl": data_volume / ".oddity" / "history.jsonl",
    }
    for name, target in links.items():
        os.link(target, folder / name)
    try:
        assert refused(trainer, "theirs.csv") == hard_link("theirs.csv", "datasets/b/rows.csv")
        assert refused(trainer, "datasets/a/theirs.csv") == hard_link("datasets/a/theirs.csv", "datasets/b/rows.csv")
        assert refused(trainer, "history.jsonl") == hard_link("history.jsonl", ".oddity/history.jsonl")
    finally:
        for name in links:
            (folder / name).unlink()


def test_a_file_under_the_folders_own_oddity_folder_is_refused(volume):
    trainer, data_volume = volume
    state = data_volume / "datasets" / "a" / ".oddity"
    state.mkdir()
    datasets.sensor_frame(EXTRA_ROWS).to_csv(state / "rows.csv", index=False)
    try:
        assert refused(trainer, ".oddity/rows.csv") == (
            "data_path '.oddity/rows.csv' is under a .oddity folder, which holds the trainer's state, never data"
        )
    finally:
        (state / "rows.csv").unlink()
        state.rmdir()


def test_a_long_path_is_named_cut_to_200_characters(volume):
    trainer, _ = volume
    data_path = "../b/" + ("x" * 200 + "/") * 4
    assert refused(trainer, data_path) == outside(data_path[:200] + "…(809 characters)")
    too_long = "x" * 5_000
    reason = "is not a usable path: File name too long"
    assert refused(trainer, too_long) == f"data_path {too_long[:200] + '…(5000 characters)'!r} {reason}"


def test_a_path_that_names_no_file_of_the_folder_is_refused(volume):
    trainer, _ = volume
    assert refused(trainer, "missing.csv") == (
        "data_path 'missing.csv' is not a file under the dataset folder 'datasets/a'"
    )


def test_a_file_of_the_folders_own_trains_named_either_way(volume):
    trainer, _ = volume
    for data_path in ("extra.csv", "datasets/a/extra.csv"):
        job = run_job(trainer, "a", data_path=data_path)
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
        status = trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="a")).datasets[0]
        assert status.samples == EXTRA_ROWS


def test_a_dataset_folder_named_oddity_is_never_a_dataset(volume):
    trainer, data_volume = volume
    folder = datasets.write_dataset(data_volume, ".oddity", spec(), {"rows.csv": datasets.sensor_frame(OWN_ROWS)})
    try:
        listed = {s.dataset for s in trainer.stub.GetStatus(trainer_pb2.GetStatusRequest()).datasets}
        assert ".oddity" not in listed and {"a", "b"} <= listed
        with pytest.raises(grpc.RpcError) as info:
            trainer.stub.Train(trainer_pb2.TrainRequest(dataset=".oddity"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        shutil.rmtree(folder)


def test_files_under_hidden_folders_are_never_data(volume):
    """A source glob that reaches into `.oddity/` (or `.ipynb_checkpoints/`) reads none of it:
    the job trains on the folder's own rows.csv alone, and the unreadable bytes there are never met."""
    trainer, data_volume = volume
    folder = datasets.write_dataset(
        data_volume,
        "globbed",
        spec(sources=[{"path": "**/*.csv"}]),
        {"rows.csv": datasets.sensor_frame(OWN_ROWS)},
    )
    try:
        for hidden in (".oddity", ".ipynb_checkpoints"):
            (folder / hidden).mkdir()
            (folder / hidden / "rows.csv").write_bytes(b"\xff\xfe not a table \x00")
        job = run_job(trainer, "globbed")
        assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
        status = trainer.stub.GetStatus(trainer_pb2.GetStatusRequest(dataset="globbed")).datasets[0]
        assert status.samples == OWN_ROWS
    finally:
        shutil.rmtree(folder)


def test_a_source_hard_linked_from_another_dataset_makes_the_second_folder_invalid(volume):
    trainer, data_volume = volume
    folder = data_volume / "datasets" / "c"
    folder.mkdir()
    os.link(data_volume / "datasets" / "b" / "rows.csv", folder / "rows.csv")
    datasets.write_dataset(data_volume, "c", spec(), {})
    expected = (
        "c/rows.csv is a hard link to b/rows.csv, a file of the dataset folder 'b'; a dataset folder reads only "
        "its own files: copy the file into 'c' instead of linking it"
    )
    try:
        statuses = {s.dataset: s for s in trainer.stub.GetStatus(trainer_pb2.GetStatusRequest()).datasets}
        assert (statuses["b"].valid, statuses["c"].valid, statuses["c"].error) == (True, False, expected)
        with pytest.raises(grpc.RpcError) as info:
            trainer.stub.Train(trainer_pb2.TrainRequest(dataset="c"))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == f"dataset 'c' is invalid: {expected}"

        # A catalogue that meets both folders at once (a restart): the older folder keeps the file.
        fresh = Datasets(data_volume / "datasets", data_volume.parent / "models", TrainerMetrics(CollectorRegistry()))
        fresh.refresh()
        assert (fresh.get("b").error, fresh.get("c").error) == ("", expected)
    finally:
        (folder / "rows.csv").unlink()
        (folder / "dataset.yaml").unlink()
        folder.rmdir()
