"""`oddity score` on a large CSV: rows/s and the command's peak memory, next to baselines.

    python -m bench.score_speed [--rows 1000000] [--features 5] [--batch-rows 10000]

A CSV of `rows` rows (an id and `features` numeric columns) is scored by a detector running
as its own process with a published model (a linear autoencoder, explanations on: the score
command's default of three top features per row). Measured: `oddity score FILE --out
scored.csv` as a child process, its resident memory sampled every 20 ms (peak must stay
under 500 MB: batches stream, the file never sits in memory); and once more without
explanations (`--top-features 0`), to show what they cost. Baselines in the same run:
(a) pandas reading the same CSV in the same chunks, no scoring: the read floor; (b) the SDK
scoring the same chunks in this process, one Detect at a time, writing nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from bench.machine import describe
from oddity.client import DetectorClient
from tests.support import models
from tests.support.servers import ServiceProcess

MODEL = "speed"
RSS_LIMIT_MB = 500
SAMPLE_SECONDS = 0.02


def write_csv(path: Path, rows: int, features: int) -> list[str]:
    """`rows` correlated normal rows with an id column, written in chunks (a few unusual ones)."""
    names = [f"f{i}" for i in range(features)]
    chunk = 100_000
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        values = models.normal_rows(n, features, seed=start)
        values[::97] += 5.0
        frame = pd.DataFrame(values, columns=names)
        frame.insert(0, "id", np.arange(start, start + n))
        frame.to_csv(path, mode="a", header=start == 0, index=False)
    return names


def read_only(path: Path, batch_rows: int) -> float:
    """Rows/s of pandas reading the file in chunks."""
    started, rows = time.perf_counter(), 0
    for chunk in pd.read_csv(path, chunksize=batch_rows):
        rows += len(chunk)
    return rows / (time.perf_counter() - started)


def sdk_in_process(path: Path, target: str, batch_rows: int) -> float:
    """Rows/s of reading and scoring each chunk with the SDK, one call at a time, no output."""
    started, rows = time.perf_counter(), 0
    with DetectorClient(target, timeout=120) as detector:
        for chunk in pd.read_csv(path, chunksize=batch_rows):
            rows += len(detector.detect(MODEL, chunk, explain_top_k=3))
    return rows / (time.perf_counter() - started)


def score_command(path: Path, out: Path, target: str, batch_rows: int, *extra: str) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stderr) of `oddity score` as a child process."""
    command = [sys.executable, "-m", "oddity.cli.main", "score", str(path), "--model", MODEL, "--out", str(out),
               "--batch-rows", str(batch_rows), "--detector", target, "--timeout", "120", *extra]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(child.pid)
    peak = [0]

    def sample() -> None:
        while child.poll() is None:
            try:
                peak[0] = max(peak[0], process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = child.communicate()
    elapsed = time.perf_counter() - started
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"oddity score failed ({child.returncode}):\n{stderr}")
    return elapsed, peak[0] / 2**20, stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=10_000)
    args = parser.parse_args()
    print(describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv, out, repository = root / "readings.csv", root / "scored.csv", root / "models"
        repository.mkdir()
        started = time.perf_counter()
        names = write_csv(csv, args.rows, args.features)
        print(f"{args.rows:,} rows x {args.features} features: {csv.stat().st_size / 2**20:.0f} MB of CSV "
              f"(written in {time.perf_counter() - started:.1f} s)")
        fitted = models.fit_pca_group(models.normal_rows(5_000, args.features), components=2)
        models.publish_simple(repository, MODEL, fitted, dimension=args.features, feature_names=names)
        detector = ServiceProcess(
            "oddity.detector.main", ["--model-repository", str(repository), "--poll-interval-seconds", "3600"]
        ).start()
        try:
            detector.wait_ready("oddity.v1.Detector")
            reading = read_only(csv, args.batch_rows)
            in_process = sdk_in_process(csv, detector.target, args.batch_rows)
            elapsed, peak_mb, stderr = score_command(csv, out, detector.target, args.batch_rows)
            unexplained, _, _ = score_command(csv, root / "plain.csv", detector.target, args.batch_rows,
                                              "--top-features", "0")
        finally:
            detector.terminate()
        with out.open("rb") as scored:
            written = sum(1 for _ in scored) - 1
        command_rate = args.rows / elapsed
        print(f"oddity score:           {command_rate:>10,.0f} rows/s  ({elapsed:.1f} s, {written:,} rows written)")
        print(f"  peak resident memory: {peak_mb:>10,.0f} MB (limit {RSS_LIMIT_MB} MB)")
        print(f"  its summary:          {stderr.strip().splitlines()[-1]}")
        print(f"  without top_features: {args.rows / unexplained:>10,.0f} rows/s  (--top-features 0: "
              f"what explanations cost)")
        print(f"baseline (a) pandas read only:       {reading:>10,.0f} rows/s; oddity score = "
              f"{command_rate / reading:.2f}x of it")
        print(f"baseline (b) SDK in-process, serial: {in_process:>10,.0f} rows/s; oddity score = "
              f"{command_rate / in_process:.2f}x of it")
        if written != args.rows or peak_mb >= RSS_LIMIT_MB:
            raise SystemExit(f"FAILED: {written:,} rows written, peak {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
