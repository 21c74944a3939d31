"""A 5,000,000-row CSV trains within a 1 GiB memory limit, as a pod with that limit would run
the trainer: the file is read a chunk at a time and each group trains on a bounded sample."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
import yaml

from oddity.trainer.spec import DEFAULT_MAX_ROWS
from oddity.v1 import trainer_pb2, trainer_pb2_grpc
from tests.support.memory_limits import cgroup_parent, memory_limit
from tests.support.servers import ServiceProcess, channel

pytestmark = pytest.mark.slow

ROWS, COLUMNS = 5_000_000, 20
GIB = 1 << 30


def write_big_csv(path, rows: int = ROWS, columns: int = COLUMNS) -> None:
    """Correlated sensor columns, written 500,000 rows at a time (the test's own memory stays small)."""
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(columns, columns)) / np.sqrt(columns)
    schema = pa.schema([(f"sensor_{j}", pa.float64()) for j in range(columns)])
    with pa_csv.CSVWriter(path, schema) as writer:
        for start in range(0, rows, 500_000):
            values = (rng.standard_normal((min(500_000, rows - start), columns)) @ mixing).round(4)
            writer.write_table(pa.table({f"sensor_{j}": values[:, j] for j in range(columns)}, schema=schema))


@pytest.mark.skipif(cgroup_parent() is None, reason="needs a writable memory cgroup (root, cgroups mounted)")
def test_a_5m_row_csv_trains_within_a_1_gib_memory_limit(tmp_path):
    data_volume, repository = tmp_path / "data", tmp_path / "models"
    folder = data_volume / "datasets" / "big"
    folder.mkdir(parents=True)
    repository.mkdir()
    write_big_csv(folder / "rows.csv")
    spec = {"sources": [{"path": "*.csv"}], "retrain": {"policy": "manual"}}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))

    with memory_limit(GIB) as cgroup:
        trainer = ServiceProcess(
            "oddity.trainer.main",
            ["--data-volume", str(data_volume), "--model-repository", str(repository), "--no-watch"],
            preexec=cgroup.join(),
        ).start()
        try:
            trainer.wait_ready("oddity.v1.Trainer", timeout=120)  # after fingerprinting the file
            with channel(trainer.target) as ch:
                stub = trainer_pb2_grpc.TrainerStub(ch)
                job = stub.Train(trainer_pb2.TrainRequest(dataset="big")).job
                for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=900):
                    job = update.job
        finally:
            trainer.kill()
        peak, kills = cgroup.peak_bytes(), cgroup.oom_kills()

    assert (job.state, job.message) == (trainer_pb2.JOB_STATE_SUCCEEDED, "published version 1")
    assert kills == 0
    assert peak < GIB, f"peak {peak / 2**20:.0f} MiB"
    print(f"trainer cgroup peak {peak / 2**20:.0f} MiB")
    history = [json.loads(line) for line in (data_volume / ".oddity" / "history.jsonl").read_text().splitlines()]
    completed = next(e["details"] for e in history if e["event_type"] == "TRAINING_COMPLETED")
    sample = DEFAULT_MAX_ROWS
    assert (completed["rows_seen"], completed["rows_used"], completed["samples"]) == (ROWS, sample, sample)
    assert completed["group_samples"] == {"all": sample}
    assert completed["columns"]["sensor_0"]["count"] == ROWS
