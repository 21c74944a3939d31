"""Trainer integrity on real files: every path stays inside its dataset folder, CSV records
are never shifted into other columns, spec mistakes surface when the spec is read, and a
repository that cannot be written is one clear line."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from oddity.trainer.data import DataError, OutsideDatasetFolder, fingerprint, load_dataset, read_csv_text
from oddity.trainer.item_datasets import _image_items, _text_items
from oddity.trainer.spec import SpecError, load_spec
from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets
from tests.trainer.test_robustness import run_job


def dataset(tmp_path: Path, name: str, spec: dict) -> Path:
    folder = tmp_path / "datasets" / name
    folder.mkdir(parents=True)
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return folder


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"sources": [{"path": "../other/readings.csv"}]}, "sources.0.path"),
        ({"sources": [{"path": "/etc/passwd"}]}, "sources.0.path"),
        ({"texts": {"path": "../../../../../../etc/passwd"}}, "texts.path"),
        ({"texts": {"path": "/etc/passwd"}}, "texts.path"),
        ({"images": {"path": "../pictures"}}, "images.path"),
        ({"images": {"path": "/var"}}, "images.path"),
        ({"images": {"path": "images", "metadata": "../meta.csv"}}, "images.metadata"),
        ({"images": {"path": "images", "metadata": "/etc/hosts"}}, "images.metadata"),
    ],
)
def test_paths_that_leave_the_folder_are_spec_errors(tmp_path, spec, field):
    folder = dataset(tmp_path, "escape", spec)
    with pytest.raises(SpecError) as refused:
        load_spec(folder)
    assert f"{field}: Value error, path " in str(refused.value)
    assert "must stay inside the dataset folder (relative, without '..')" in str(refused.value)


def test_links_that_leave_the_folder_are_refused_and_links_inside_work(tmp_path):
    other = dataset(tmp_path, "sensors", {"sources": [{"path": "*.csv"}]})
    datasets.sensor_frame(100).to_csv(other / "readings.csv", index=False)
    secret = tmp_path / "secret.csv"
    datasets.sensor_frame(100, seed=3).to_csv(secret, index=False)

    # A link to another team's dataset, and one to a file outside the volume.
    for name, target in (("team", other / "readings.csv"), ("outside", secret)):
        folder = dataset(tmp_path, name, {"sources": [{"path": "*.csv"}]})
        (folder / "data.csv").symlink_to(target)
        spec = load_spec(folder)
        with pytest.raises(OutsideDatasetFolder) as refused:
            load_dataset(folder, spec)
        assert str(refused.value) == (
            "file 'data.csv' leads outside the dataset folder (through '..' or a symbolic link); "
            "only files inside it are read"
        )
        with pytest.raises(OSError):  # the datasets' scan reports it as unreadable data, it reads nothing
            fingerprint(folder, spec)

    # A link inside the folder is just another name for a file the dataset owns.
    inside = dataset(tmp_path, "inside", {"sources": [{"path": "current.csv"}]})
    (inside / "2026-11.csv").write_text(datasets.sensor_frame(120).to_csv(index=False))
    (inside / "current.csv").symlink_to("2026-11.csv")
    assert len(load_dataset(inside, load_spec(inside)).features) == 120

    # A dataset folder that is itself a link out of the datasets folder.
    (tmp_path / "datasets" / "alias").symlink_to(tmp_path)
    with pytest.raises(OutsideDatasetFolder, match="the dataset folder 'alias' leads outside"):
        load_dataset(tmp_path / "datasets" / "alias", load_spec(inside))


def test_image_and_text_paths_are_confined_through_links(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "texts.csv").write_text("text\nhello\n")
    (outside / "a.png").write_bytes(b"not read")

    texts = dataset(tmp_path, "texts", {"texts": {"path": "texts.csv"}})
    (texts / "texts.csv").symlink_to(outside / "texts.csv")
    with pytest.raises(OutsideDatasetFolder, match=r"texts\.path 'texts\.csv' leads outside"):
        _text_items(texts, load_spec(texts).texts)

    images = dataset(tmp_path, "images", {"images": {"path": "images"}})
    (images / "images").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OutsideDatasetFolder, match=r"images\.path 'images' leads outside"):
        _image_items(images, load_spec(images).images)

    listed = dataset(tmp_path, "listed", {"images": {"path": "images"}})
    (listed / "images").mkdir()
    (listed / "metadata.csv").write_text("file_name,age\n../../elsewhere/a.png,5\n")
    with pytest.raises(OutsideDatasetFolder, match=r"image 'images/\.\./\.\./elsewhere/a\.png' leads outside"):
        _image_items(listed, load_spec(listed).images)


def test_records_with_the_wrong_field_count_are_malformed_and_never_shift_columns(tmp_path):
    frame = datasets.sensor_frame(2000)
    lines = frame.to_csv(index=False).splitlines()
    for i in range(1, len(lines), 5):  # 400 of 2000 records: one extra field, or one missing
        lines[i] = lines[i] + ",7.5" if i % 2 else lines[i].rsplit(",", 1)[0]
    table, malformed = read_csv_text("\n".join(lines) + "\n")
    assert malformed == 400
    assert list(table.columns) == list(frame.columns)
    np.testing.assert_allclose(table.to_numpy(), np.delete(frame.to_numpy(), np.arange(0, 2000, 5), axis=0), rtol=1e-6)

    folder = dataset(tmp_path, "shifted", {"sources": [{"path": "*.csv"}]})
    (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as too_many:
        load_dataset(folder, load_spec(folder))
    assert str(too_many.value).startswith("400 of 2000 rows (20%) are malformed")

    # Every record with an extra field: nothing is trained on mislabelled columns.
    every = "\n".join([lines[0]] + [line + ",1" for line in frame.to_csv(index=False).splitlines()[1:]]) + "\n"
    (folder / "rows.csv").write_text(every)
    with pytest.raises(DataError, match=r"^2000 of 2000 rows \(100%\) are malformed"):
        load_dataset(folder, load_spec(folder))


def test_unknown_model_parameters_are_a_spec_error_when_read(tmp_path):
    folder = dataset(tmp_path, "typo", {"sources": [{"path": "*.csv"}], "model": {"kind": "knn", "params": {"kk": 3}}})
    with pytest.raises(SpecError) as refused:
        load_spec(folder)
    assert str(refused.value) == (
        "dataset.yaml: model: Value error, unknown knn parameters ['kk']; allowed: "
        "['aggregate', 'k', 'max_reference', 'metric', 'seed']"
    )


def test_a_repository_that_cannot_be_written_fails_the_job_in_one_line(data_volume, repository):
    datasets.write_dataset(
        data_volume, "blocked", {"sources": [{"path": "*.csv"}], "retrain": {"policy": "manual"}},
        {"rows.csv": datasets.sensor_frame(300)},
    )
    (repository / "blocked").write_text("a file where the model's folder belongs")
    trainer = start_trainer(data_volume, repository)
    try:
        job = run_job(trainer, "blocked")
    finally:
        trainer.close()
    assert job.state == trainer_pb2.JOB_STATE_FAILED
    assert job.message == f"cannot write to the model repository {repository}: File exists"
    assert os.path.isfile(repository / "blocked")


def test_a_csv_read_through_pandas_would_have_shifted(tmp_path):
    """Why the strict reader exists: pandas alone turns a leading extra field into the index."""
    text = "a,b\n1,2,3\n4,5,6\n"
    shifted = pd.read_csv(pd.io.common.StringIO(text))
    assert list(shifted["a"]) == [2, 5]  # the shift the strict reader prevents
    table, malformed = read_csv_text(text)
    assert malformed == 2 and table.empty and list(table.columns) == ["a", "b"]
