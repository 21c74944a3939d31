"""Scale: data far larger than memory, with the trainer and detector as a user runs them.

    python -m bench.scale [--root DIR] [--parts csv,parquet,dev,spark,jobs] [--jobs 20]

For each dataset: the trainer's peak resident memory (VmHWM of its process), the time from the
data landing in its folder (renamed into place) to the new version serving in the detector,
rows seen and used, and ROC-AUC on a held-out test part scored through the detector.
Baselines in the same run:
- pyarrow reading the same file whole (the plain way to read it);
- the same detector trained in-process (`pipeline.train`) on the same sample.
Targets: peak RSS <= 1.5 GiB for the synthetic sets; landing -> serving <= 3 x (pyarrow read
+ in-process training on the sample); AUC within 0.005 of training on all rows.

Datasets:
- csv: 5,000,000 x 20 correlated sensor columns, one CSV (~940 MB);
- parquet: 20,000,000 x 20, a folder of 8 hive partitions (`part=0/...`);
- dev: the largest development sets (34_smtp, 32_shuttle, 22_magic.gamma) at full size, 60% of
  the normal rows to train on; beside them, in-process AUC when each trains on a sample of
  10k / 25k / 50k rows and on all rows (where the default max_rows stops mattering);
- spark: bench/batch_scoring.py on the 20M-row folder: Spark local[2] vs in-process ONNX
  Runtime, answers checked against the detector on 10,000 rows;
- jobs: the trainer's resident memory between jobs over --jobs jobs on a 1M-row CSV.
Synthetic files are written once under --root and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as pa_dataset
import pyarrow.parquet as pq
import yaml
from sklearn.metrics import roc_auc_score

from bench.machine import describe
from oddity.trainer import pipeline
from oddity.trainer.data import load_dataset
from oddity.trainer.spec import DEFAULT_MAX_ROWS, load_spec
from oddity.v1 import detector_pb2, detector_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from tests.support.client import detect_request
from tests.support.servers import ServiceProcess, channel

COLUMNS = 20
GIB = 1 << 30
DEV_SETS = ("34_smtp", "32_shuttle", "22_magic.gamma")
DEV_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "anomaly-benchmarks" / "tabular"


# -- data ---------------------------------------------------------------------------------


def mixing(columns: int = COLUMNS) -> np.ndarray:
    return np.random.default_rng(42).normal(size=(columns, columns)) / np.sqrt(columns)


def normal_block(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Correlated sensor readings: 20 columns driven by 20 hidden factors."""
    return rng.standard_normal((rows, COLUMNS)) @ mixing()


def test_part(rows: int = 20_000, anomalies: int = 1_000) -> tuple[np.ndarray, np.ndarray]:
    """New normal rows, and rows whose columns keep their spread but lose their relations."""
    rng = np.random.default_rng(7)
    normal = normal_block(rng, rows)
    spread = normal.std(axis=0)
    broken = rng.standard_normal((anomalies, COLUMNS)) * spread
    x = np.vstack([normal, broken]).astype(np.float32)
    return x, np.r_[np.zeros(rows), np.ones(anomalies)]


def write_csv(path: Path, rows: int) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(0)
    schema = pa.schema([(f"sensor_{j}", pa.float64()) for j in range(COLUMNS)])
    partial = path.with_suffix(".partial")
    with pa_csv.CSVWriter(partial, schema) as writer:
        for start in range(0, rows, 500_000):
            values = normal_block(rng, min(500_000, rows - start)).round(5)
            writer.write_table(pa.table({f"sensor_{j}": values[:, j] for j in range(COLUMNS)}, schema=schema))
    partial.rename(path)


def write_parquet_folder(path: Path, rows: int, partitions: int = 8) -> None:
    if path.exists():
        return
    rng = np.random.default_rng(1)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    per = rows // partitions
    for part in range(partitions):
        folder = partial / f"part={part}"
        folder.mkdir(parents=True)
        schema = pa.schema([(f"sensor_{j}", pa.float32()) for j in range(COLUMNS)])
        with pq.ParquetWriter(folder / "data-0.parquet", schema) as writer:
            for start in range(0, per, 500_000):
                values = normal_block(rng, min(500_000, per - start)).astype(np.float32)
                writer.write_table(pa.table({f"sensor_{j}": values[:, j] for j in range(COLUMNS)}))
    partial.rename(path)


def pyarrow_read_seconds(path: Path) -> float:
    start = time.perf_counter()
    if path.is_dir():
        table = pa_dataset.dataset(path, format="parquet", partitioning="hive").to_table()
    elif path.suffix == ".csv":
        table = pa_csv.read_csv(path)
    else:
        table = pq.read_table(path)
    seconds = time.perf_counter() - start
    del table
    return seconds


# -- the services -------------------------------------------------------------------------


@dataclass
class Landed:
    seconds: float
    peak_rss: int
    history: dict
    auc: float


class Stack:
    """A detector and a trainer (watching its data volume) as processes."""

    def __init__(self, root: Path) -> None:
        self.data_volume, self.repository = root / "data", root / "models"
        shutil.rmtree(root, ignore_errors=True)
        (self.data_volume / "datasets").mkdir(parents=True)
        self.repository.mkdir(parents=True)
        self.detector = ServiceProcess(
            "oddity.detector.main", ["--model-repository", str(self.repository), "--poll-interval-seconds", "30"]
        ).start()
        self.trainer = ServiceProcess(
            "oddity.trainer.main",
            [
                "--data-volume", str(self.data_volume),
                "--model-repository", str(self.repository),
                "--detectors", json.dumps([self.detector.target]),
            ],
        ).start()  # fmt: skip
        self.trainer.wait_ready("oddity.v1.Trainer")

    def close(self) -> None:
        self.trainer.terminate()
        self.detector.terminate()

    def trainer_memory(self, field: str) -> int:
        """VmHWM (peak) or VmRSS of the trainer process, in bytes."""
        assert self.trainer.proc is not None
        for line in Path(f"/proc/{self.trainer.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc status")

    def land(self, name: str, source: Path, spec: dict, test: tuple[np.ndarray, np.ndarray]) -> Landed:
        """Move `source` (a file or folder) into a new dataset folder and wait until the detector
        serves the version trained on it."""
        folder = self.data_volume / "datasets" / name
        folder.mkdir()
        (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
        landed = time.perf_counter()
        if source.is_file():
            os.link(source, folder / source.name)
        else:
            shutil.copytree(source, folder / source.name, copy_function=os.link)
        with channel(self.detector.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            while True:
                models = stub.ListModels(detector_pb2.ListModelsRequest()).models
                if any(m.name == name and m.serving_version for m in models):
                    break
                failed = self.failure(name)
                if failed:
                    raise RuntimeError(f"{name}: {failed}")
                time.sleep(0.05)
            seconds = time.perf_counter() - landed
            x, y = test
            scores = []
            for start in range(0, len(x), 4096):
                response = stub.Detect(detect_request(name, x[start : start + 4096]), timeout=300)
                scores.extend(response.scores)
        return Landed(seconds, self.trainer_memory("VmHWM"), self.completed(name), float(roc_auc_score(y, scores)))

    def events(self) -> list[dict]:
        path = self.data_volume / ".oddity" / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def completed(self, name: str) -> dict:
        return next(e for e in self.events() if e["event_type"] == "TRAINING_COMPLETED" and e["dataset"] == name)[
            "details"
        ]

    def failure(self, name: str) -> str:
        failed = [e for e in self.events() if e["event_type"] == "TRAINING_FAILED" and e["dataset"] == name]
        return failed[-1]["message"] if failed else ""


def in_process(folder: Path) -> tuple[float, int, pipeline.TrainedModel]:
    """Load the dataset as the trainer does (outside the timing), then train on its sample:
    training seconds, rows trained on, the trained model."""
    spec = load_spec(folder)
    data = load_dataset(folder, spec)
    start = time.perf_counter()
    trained = pipeline.train(spec, data, fingerprint="bench")
    seconds = time.perf_counter() - start
    return seconds, len(data.features), trained


def in_process_auc(trained: pipeline.TrainedModel, test: tuple[np.ndarray, np.ndarray]) -> float:
    from oddity.trainer.validation import onnx_scores, onnx_session

    session = onnx_session(trained.onnx_files["all.onnx"])
    x, y = test
    return float(roc_auc_score(y, onnx_scores(session, x)))


# -- parts --------------------------------------------------------------------------------


def synthetic(root: Path, kind: str) -> None:
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        source, rows = files / "sensors-5m.csv", 5_000_000
        write_csv(source, rows)
        spec = {"sources": [{"path": "*.csv"}], "retrain": {"debounce_seconds": 0.5}}
    else:
        source, rows = files / "sensors-20m", 20_000_000
        write_parquet_folder(source, rows)
        spec = {"sources": [{"path": source.name, "format": "parquet"}], "retrain": {"debounce_seconds": 0.5}}
    size = sum(p.stat().st_size for p in ([source] if source.is_file() else source.rglob("*.parquet")))
    print(f"\n{kind}: {rows:,} x {COLUMNS} ({size / 2**20:,.0f} MiB on disk)")
    read = pyarrow_read_seconds(source)
    test = test_part()
    stack = Stack(root / f"stack-{kind}")
    try:
        landed = stack.land(f"sensors-{kind}", source, spec, test)
        folder = stack.data_volume / "datasets" / f"sensors-{kind}"
        train_seconds, used, trained = in_process(folder)
    finally:
        stack.close()
    baseline = read + train_seconds
    details = landed.history
    print(f"  rows seen {details['rows_seen']:,}, used {details['rows_used']:,} (in-process sample {used:,})")
    print(f"  trainer peak RSS {landed.peak_rss / 2**30:.2f} GiB (target <= 1.5)")
    print(
        f"  landing -> serving {landed.seconds:.1f} s; baseline pyarrow read {read:.1f} s + in-process training "
        f"{train_seconds:.1f} s = {baseline:.1f} s; ratio {landed.seconds / baseline:.2f} (target <= 3)"
    )
    in_auc = in_process_auc(trained, test)
    print(f"  held-out ROC-AUC: served {landed.auc:.4f}, in-process on the same sample {in_auc:.4f}")


def development_sets(root: Path) -> None:
    print("\ndev: the largest development sets at full size (train on 60% of the normal rows)")
    stack = Stack(root / "stack-dev")
    try:
        for name in DEV_SETS:
            data = np.load(DEV_ROOT / f"{name}.npz", allow_pickle=False)
            x, y = data["X"].astype(np.float32), data["y"].astype(int)
            rng = np.random.default_rng(0)
            normal = rng.permutation(np.flatnonzero(y == 0))
            train_rows = normal[: int(0.6 * len(normal))]
            test_rows = np.r_[normal[len(train_rows) :], np.flatnonzero(y == 1)]
            source = root / "files" / f"{name}.csv"
            source.parent.mkdir(parents=True, exist_ok=True)
            columns = [f"x{j}" for j in range(x.shape[1])]
            pa_csv.write_csv(pa.table({c: x[train_rows, j] for j, c in enumerate(columns)}), source)
            spec = {"sources": [{"path": "*.csv"}], "retrain": {"debounce_seconds": 0.5}}
            landed = stack.land(name.replace(".", "-"), source, spec, (x[test_rows], y[test_rows]))
            print(
                f"  {name}: {len(train_rows):,} x {x.shape[1]} rows; landing -> serving {landed.seconds:.1f} s, "
                f"peak RSS {landed.peak_rss / 2**30:.2f} GiB, rows seen {landed.history['rows_seen']:,} used "
                f"{landed.history['rows_used']:,}, served AUC {landed.auc:.4f}"
            )
            sweep = []
            for limit in (10_000, 25_000, 50_000, None):
                if limit is not None and limit >= len(train_rows):
                    continue
                folder = Path(tempfile.mkdtemp(prefix="oddity-sweep-"))
                shutil.copy(source, folder / source.name)
                bounded = {**spec, "training": {"max_rows": limit or 10**9}}
                (folder / "dataset.yaml").write_text(yaml.safe_dump(bounded))
                seconds, used, trained = in_process(folder)
                auc = in_process_auc(trained, (x[test_rows], y[test_rows]))
                sweep.append(f"{used:,} rows {auc:.4f} ({seconds:.0f} s)")
                shutil.rmtree(folder)
            print("    in-process AUC by sample size: " + "; ".join(sweep))
    finally:
        stack.close()


def spark_scoring(root: Path) -> None:
    try:
        from bench import batch_scoring
    except ImportError as exc:
        print(f"\nspark: skipped ({exc})")
        return
    source = root / "files" / "sensors-20m"
    write_parquet_folder(source, 20_000_000)
    stack = Stack(root / "stack-spark")
    try:
        stack.land("sensors-spark", root / "files" / "sensors-5m.csv", {"sources": [{"path": "*.csv"}]}, test_part())
        print("\nspark: scoring the 20M-row Parquet folder")
        # In-process ONNX Runtime's rate from the first 2,000,000 rows; Spark scores all 20M.
        figures = batch_scoring.measure(
            source, stack.repository, "sensors-spark", detector_address=stack.detector.target, baseline_rows=2_000_000
        )
        print("  " + json.dumps(figures))
    finally:
        stack.close()


def resident_memory_over_jobs(root: Path, jobs: int) -> None:
    source = root / "files" / "sensors-1m.csv"
    write_csv(source, 1_000_000)
    stack = Stack(root / "stack-jobs")
    try:
        name = "repeated"
        stack.land(name, source, {"sources": [{"path": "*.csv"}], "retrain": {"debounce_seconds": 0.5}}, test_part())
        between = [stack.trainer_memory("VmRSS")]
        with channel(stack.trainer.target) as ch:
            stub = trainer_pb2_grpc.TrainerStub(ch)
            for _ in range(jobs - 1):
                job = stub.Train(trainer_pb2.TrainRequest(dataset=name, force=True)).job
                for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=1800):
                    job = update.job
                if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
                    raise RuntimeError(job.message)
                between.append(stack.trainer_memory("VmRSS"))
    finally:
        stack.close()
    mib = [round(b / 2**20) for b in between]
    print(f"\njobs: trainer RSS between {jobs} jobs on 1M x {COLUMNS} (MiB): {mib}")
    first = between[0]
    print(f"  last / after the first job = {between[-1] / first:.3f}; max / first = {max(between) / first:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "oddity-bench-scale")
    parser.add_argument("--parts", default="csv,parquet,dev,spark,jobs")
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    print(describe())
    print(f"training.max_rows default {DEFAULT_MAX_ROWS:,}")
    args.root.mkdir(parents=True, exist_ok=True)
    for kind in ("csv", "parquet"):
        if kind in parts:
            synthetic(args.root, kind)
    if "dev" in parts:
        development_sets(args.root)
    if "spark" in parts:
        spark_scoring(args.root)
    if "jobs" in parts:
        resident_memory_over_jobs(args.root, args.jobs)


if __name__ == "__main__":
    main()
