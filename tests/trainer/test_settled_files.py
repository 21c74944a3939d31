"""Never train on half-copied data: a dataset trains once its files have settled (quiet for
the debounce, the same on a look twice), files named as in progress are never read, and a
`_READY` marker hands off explicitly."""

import threading
import time

import pytest

from oddity.common import bundle
from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets
from tests.support.waiting import wait_for
from tests.trainer.scans import after_scans, started, training


def published(trainer, dataset: str) -> list[trainer_pb2.HistoryEvent]:
    events = trainer.stub.History(trainer_pb2.HistoryRequest(dataset=dataset)).events
    return [e for e in events if e.event_type in ("TRAINING_COMPLETED", "PUBLISHED")]


def failures(trainer, dataset: str) -> list[trainer_pb2.HistoryEvent]:
    request = trainer_pb2.HistoryRequest(dataset=dataset, event_types=["TRAINING_FAILED"])
    return list(trainer.stub.History(request).events)



@pytest.fixture
def trainer(data_volume, repository):
    # Events and a scan every quarter second: both must wait for settled files.
    handle = start_trainer(data_volume, repository, force_polling=False, scan_interval_seconds=0.25)
    yield handle
    handle.close()


@pytest.mark.slow  # a copy of 20 s: ten times the debounce
def test_a_csv_copied_in_chunks_trains_once_on_every_row(trainer, data_volume, repository):
    spec = {"sources": [{"path": "*.csv"}], "retrain": {"debounce_seconds": 2.0}}
    folder = data_volume / "datasets" / "copied"
    folder.mkdir()
    (folder / "dataset.yaml").write_text(f"sources: [{{path: '*.csv'}}]\nretrain: {spec['retrain']}\n")
    frame = datasets.sensor_frame(4000, seed=2)
    lines = frame.to_csv(index=False).splitlines(keepends=True)
    header, body = lines[0], lines[1:]

    def copy_slowly() -> None:  # 40 chunks of 100 rows, one every half second: 20 s
        with (folder / "readings.csv").open("w") as out:
            out.write(header)
            for start in range(0, len(body), 100):
                out.writelines(body[start : start + 100])
                out.flush()
                time.sleep(0.5)

    copier = threading.Thread(target=copy_slowly)
    copier.start()
    copier.join()
    wait_for(lambda: bundle.list_versions(repository / "copied") == [1], timeout=60, what="version 1")
    after_scans(trainer)  # a scan or a late event must not train it again
    assert (training(trainer, "copied"), started(trainer, "copied")) == (False, 1)
    assert bundle.list_versions(repository / "copied") == [1]
    completed = [e for e in published(trainer, "copied") if e.event_type == "TRAINING_COMPLETED"]
    assert [int(e.details["samples"]) for e in completed] == [4000]


@pytest.mark.slow
def test_a_file_renamed_into_place_trains_once_and_temporary_names_are_never_read(trainer, data_volume, repository):
    folder = data_volume / "datasets" / "renamed"
    folder.mkdir()
    (folder / "dataset.yaml").write_text("sources: [{path: '*'}]\nretrain: {debounce_seconds: 0.5}\n")
    # Written under in-progress names: none is read (a bare `*` skips them, and the spec
    # itself), so the run finds no data.
    partial = folder / "readings.csv.partial"
    datasets.sensor_frame(1500, seed=4).to_csv(partial, index=False)
    (folder / ".readings.csv.swp").write_text("editor state")
    (folder / "upload.tmp").write_text("a,b\n1,2\n")
    failed = wait_for(lambda: failures(trainer, "renamed"), what="the run that finds no data")
    assert [e.message for e in failed] == ["no files match ['*']"]
    assert bundle.list_versions(repository / "renamed") == []
    partial.rename(folder / "readings.csv")
    wait_for(lambda: bundle.list_versions(repository / "renamed") == [1], timeout=30, what="version 1")
    after_scans(trainer)
    assert (training(trainer, "renamed"), started(trainer, "renamed")) == (False, 2)
    assert bundle.list_versions(repository / "renamed") == [1]
    [completed] = [e for e in published(trainer, "renamed") if e.event_type == "TRAINING_COMPLETED"]
    assert int(completed.details["samples"]) == 1500


@pytest.mark.slow
def test_a_ready_marker_hands_off_explicitly(trainer, data_volume, repository):
    folder = data_volume / "datasets" / "marked"
    folder.mkdir()
    (folder / "dataset.yaml").write_text(
        "sources: [{path: '*.csv'}]\nretrain: {debounce_seconds: 0.2, ready_marker: true}\n"
    )
    datasets.sensor_frame(800, seed=5).to_csv(folder / "part-1.csv", index=False)
    after_scans(trainer)  # quiet for longer than the debounce, but not handed off
    assert (training(trainer, "marked"), started(trainer, "marked")) == (False, 0)
    assert bundle.list_versions(repository / "marked") == []
    datasets.sensor_frame(800, seed=6).to_csv(folder / "part-2.csv", index=False)
    (folder / "_READY").touch()
    wait_for(lambda: bundle.list_versions(repository / "marked") == [1], timeout=30, what="version 1")
    # The version's folder appears a moment before the run's history event.
    completed = wait_for(
        lambda: next((e for e in published(trainer, "marked") if e.event_type == "TRAINING_COMPLETED"), None),
        what="TRAINING_COMPLETED",
    )
    assert int(completed.details["samples"]) == 1600
    # New data after the marker waits for the next one.
    datasets.sensor_frame(400, seed=7).to_csv(folder / "part-3.csv", index=False)
    after_scans(trainer)
    assert (training(trainer, "marked"), started(trainer, "marked")) == (False, 1)
    assert bundle.list_versions(repository / "marked") == [1]
