"""Trainer speed, with baselines in the same run.

    python -m bench.trainer_speed [--rows 50000] [--features 20] [--epochs 50]

1. Train + validate + export + publish an autoencoder on rows x features (epochs, batch 64),
   split by phase; baseline: the bare torch training loop on the same data and network.
2. A data file landing -> the new version serving in the detector, excluding training time;
   baseline: the dataset's own debounce (the wait the user asked for).
3. Scoring all rows through the detector in one Detect call; baseline: in-process ONNX
   Runtime on the same rows and graph.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import yaml

from bench.machine import describe
from oddity.common import bundle
from oddity.trainer import pipeline
from oddity.trainer.data import fingerprint, load_dataset
from oddity.trainer.learners import AutoencoderLearner
from oddity.trainer.publisher import Publisher
from oddity.trainer.spec import load_spec
from oddity.v1 import detector_pb2, detector_pb2_grpc
from tests.support.client import detect_request
from tests.support.models import normal_rows
from tests.support.servers import ServiceProcess, channel


def write_dataset(folder: Path, rows: int, features: int, epochs: int, debounce: float) -> pd.DataFrame:
    folder.mkdir(parents=True)
    frame = pd.DataFrame(normal_rows(rows, features, seed=0), columns=[f"f{i}" for i in range(features)])
    frame.to_csv(folder / "data.csv", index=False)
    spec = {
        "sources": [{"path": "*.csv"}],
        "model": {"kind": "autoencoder", "params": {"epochs": epochs, "batch_size": 64, "patience": epochs}},
        "retrain": {"policy": "on_change", "debounce_seconds": debounce},
        "min_samples": 100,
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))
    return frame


def bench_training(root: Path, rows: int, features: int, epochs: int) -> None:
    import torch  # noqa: F401  (imported once per trainer process; not part of a run)

    folder = root / "data" / "datasets" / "speed"
    write_dataset(folder, rows, features, epochs, debounce=1.0)
    repository = root / "models"
    spec = load_spec(folder)
    start = time.perf_counter()
    data = load_dataset(folder, spec)
    digest = fingerprint(folder, spec)
    load_seconds = time.perf_counter() - start
    trained = pipeline.train(spec, data, fingerprint=digest)
    start = time.perf_counter()
    Publisher(repository).publish(trained.manifest, trained.onnx_files, keep=5)
    publish_seconds = time.perf_counter() - start
    phases = {"load": load_seconds, **trained.durations, "publish": publish_seconds}
    total = sum(phases.values())

    # Baseline: the same network and loop, torch only (no splits, export, validation or publishing).
    bare = AutoencoderLearner(epochs=epochs, batch_size=64, patience=epochs, validation_fraction=0.1)
    start = time.perf_counter()
    bare.fit(data.features[: int(len(data.features) * 0.8)])
    bare_seconds = time.perf_counter() - start
    print(f"1. autoencoder on {rows:,} x {features}, {epochs} epochs, batch 64")
    print("   " + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()) + f"; total {total:.1f}s (target < 60 s)")
    print(f"   baseline: bare torch loop {bare_seconds:.1f}s; pipeline / bare = {total / bare_seconds:.2f}")


def bench_landing(root: Path, debounce: float) -> None:
    data_volume, repository = root / "landing" / "data", root / "landing" / "models"
    repository.mkdir(parents=True)
    (data_volume / "datasets").mkdir(parents=True)
    detector = ServiceProcess(
        "oddity.detector.main", ["--model-repository", str(repository), "--poll-interval-seconds", "30"]
    ).start()
    trainer = ServiceProcess(
        "oddity.trainer.main",
        [
            "--data-volume",
            str(data_volume),
            "--model-repository",
            str(repository),
            "--detectors",
            json.dumps([detector.target]),
        ],
    ).start()
    trainer.wait_ready("oddity.v1.Trainer")
    try:
        landed = time.perf_counter()
        write_dataset(data_volume / "datasets" / "landing", 5000, 20, epochs=3, debounce=debounce)
        with channel(detector.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            while True:
                models = stub.ListModels(detector_pb2.ListModelsRequest()).models
                if any(m.name == "landing" and m.serving_version for m in models):
                    break
                time.sleep(0.005)
        serving = time.perf_counter()
        history = [json.loads(line) for line in (data_volume / ".oddity" / "history.jsonl").read_text().splitlines()]
        done = next(e for e in history if e["event_type"] == "TRAINING_COMPLETED")
        train_seconds = done["details"]["phase_seconds"]["train"]
        total = serving - landed
        rest = total - train_seconds
        print("2. data file landing -> version serving in the detector")
        print(
            f"   total {total:.2f}s, of which training {train_seconds:.2f}s; without training {rest:.2f}s "
            f"(target < 2 s), of which the debounce {debounce:.2f}s; without it {rest - debounce:.2f}s"
        )
    finally:
        trainer.terminate()
        detector.terminate()


def bench_scoring(root: Path, rows: int, features: int) -> None:
    repository = root / "models"
    model = "speed"
    version = bundle.list_versions(repository / model)[-1]
    onnx_bytes = bundle.load_verified_version(repository, model, version).onnx["all"]
    table = normal_rows(rows, features, seed=1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    session.run(["score"], {"input": table})
    timings = []
    for _ in range(5):
        start = time.perf_counter()
        session.run(["score"], {"input": table})
        timings.append(time.perf_counter() - start)
    in_process = float(np.median(timings))
    detector = ServiceProcess("oddity.detector.main", ["--model-repository", str(repository)]).start()
    detector.wait_ready("oddity.v1.Detector")
    try:
        request = detect_request(model, table)
        with channel(detector.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            stub.Detect(request, timeout=60)
            timings = []
            for _ in range(5):
                start = time.perf_counter()
                response = stub.Detect(request, timeout=60)
                timings.append(time.perf_counter() - start)
            assert len(response.scores) == rows
    finally:
        detector.terminate()
    served = float(np.median(timings))
    print(f"3. scoring {rows:,} rows x {features} in one Detect call")
    print(
        f"   detector {served:.3f}s (target < 1 s); in-process ORT {in_process:.3f}s; "
        f"detector / in-process = {served / in_process:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--debounce", type=float, default=0.5)
    args = parser.parse_args()
    print(describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench_training(root, args.rows, args.features, args.epochs)
        bench_landing(root, args.debounce)
        bench_scoring(root, args.rows, args.features)


if __name__ == "__main__":
    main()
