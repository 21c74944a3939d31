"""Trainer speed, with baselines in the same run.

    python -m bench.trainer_speed [--rows 50000] [--features 20] [--trees 100] [--skip-serving]
                                  [--landing-only] [--landings 3] [--debounce 0.5]

1. Train + publish an autoencoder on rows x features with the trainer's defaults (what a
   dataset.yaml with `model: {kind: autoencoder}` gets), split by phase: load, train (the
   served model and its cross-fitting fold models, side by side), calibrate, export, validate,
   publish. Baseline: the seeds' recipe as a bare torch loop on the same rows (bench/quality.py's
   autoencoder baseline: in->64->8->64->in, Adam 1e-3, 50 epochs, batch 64), at whichever of
   1 or 2 torch threads a short probe finds faster here. Target: pipeline / bare <= 0.5. Both
   models' ROC-AUC on the same held-out rows (new normal rows vs normal rows nudged off the
   data's low-dimensional structure by a little noise) is a sanity check, not the measure:
   with one seed each, the seed alone moves either model between ~0.82 and ~0.86 on these
   rows. The measure is `python -m bench.quality --kind autoencoder` (and without --kind, the
   default `auto`) before and after a change: mean ROC-AUC per group on real sets.
2. A data file landing -> the new version serving in the detector, excluding training time,
   medians over --landings landings, each on a trainer started afresh and left to finish its
   start-up imports; split: the file detected -> the job started -> the job without its
   training -> training -> the detector serving (from the trainer's and detector's JSON logs
   and the history). Baseline: the dataset's own debounce (the wait the user asked for);
   target: <= 2 s beyond it.
3. Scoring all rows through the detector in one Detect call; baseline: in-process ONNX
   Runtime on the same rows and graph.
4. An isolation forest (--trees) on the same rows: its ONNX graph built, loaded into an ONNX
   Runtime session and run on 2,000 rows, in seconds per 100 trees. Baseline: skl2onnx's
   convert_sklearn of the same forest (the trainer's export before), its session with ORT's
   default graph optimizations and with them off. Both graphs are checked against
   scikit-learn's scores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score

from bench.machine import describe
from bench.quality_baselines import AE_BATCH, AE_EPOCHS, standardize, train_seeds_network
from oddity.common import bundle
from oddity.trainer import pipeline, runtime
from oddity.trainer.data import fingerprint, load_dataset
from oddity.trainer.learners import AutoencoderLearner
from oddity.trainer.learners.scikit import IsolationForestLearner, _SklearnDetector
from oddity.trainer.publisher import Publisher
from oddity.trainer.settings import TrainerSettings
from oddity.trainer.spec import load_spec
from oddity.trainer.validation import onnx_scores, onnx_session
from oddity.v1 import detector_pb2, detector_pb2_grpc
from tests.support.client import detect_request
from tests.support.models import normal_rows
from tests.support.servers import ServiceProcess, channel


def write_dataset(folder: Path, frame: pd.DataFrame, model: dict, debounce: float) -> None:
    folder.mkdir(parents=True)
    frame.to_csv(folder / "data.csv", index=False)
    spec = {
        "sources": [{"path": "*.csv"}],
        "model": model,
        "retrain": {"policy": "on_change", "debounce_seconds": debounce},
        "min_samples": 100,
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))


def table(rows: int, features: int, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(normal_rows(rows, features, seed=seed), columns=[f"f{i}" for i in range(features)])


NUDGE = 0.05  # noise off the structure, in column deviations: hard enough that models differ


def held_out(rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    """New normal rows, then as many other normal rows nudged off the data's low-dimensional
    structure (independent noise of 5% of each column's deviation); labels 0/1."""
    normal = normal_rows(rows, features, seed=1)
    other = normal_rows(rows, features, seed=3)
    noise = np.random.default_rng(2).normal(0.0, NUDGE, other.shape) * normal_rows(rows, features, seed=0).std(axis=0)
    return np.concatenate([normal, (other + noise).astype(np.float32)]), np.r_[np.zeros(rows), np.ones(rows)]


def faster_threads(rows: np.ndarray) -> tuple[int, dict[int, float]]:
    """Which torch thread count runs the seeds' loop faster here: µs per step, best of 3 probes."""
    import torch

    probe_epochs = 300 / (len(rows) / AE_BATCH)
    per_step: dict[int, float] = {}
    for threads in (1, 2, 1, 2, 1, 2):
        torch.set_num_threads(threads)
        start = time.perf_counter()
        train_seeds_network(rows, probe_epochs, seed=0)
        elapsed = (time.perf_counter() - start) / 300 * 1e6
        per_step[threads] = min(per_step.get(threads, float("inf")), elapsed)
    return min(per_step, key=lambda t: per_step[t]), per_step


def bench_training(root: Path, rows: int, features: int) -> None:
    import torch

    folder = root / "data" / "datasets" / "speed"
    frame = table(rows, features)
    write_dataset(folder, frame, {"kind": "autoencoder"}, debounce=1.0)
    test, labels = held_out(5000, features)

    # Baseline: the seeds' recipe, torch only (no calibration, export, validation or publishing).
    train_rows, test_rows = standardize(frame.to_numpy(np.float32), test)
    threads, per_step = faster_threads(train_rows)
    torch.set_num_threads(threads)
    start = time.perf_counter()
    bare = train_seeds_network(train_rows, AE_EPOCHS, seed=0)
    bare_seconds = time.perf_counter() - start
    with torch.no_grad():
        held = torch.from_numpy(test_rows)
        bare_auc = roc_auc_score(labels, torch.mean((bare(held) - held) ** 2, dim=1).numpy())

    repository = root / "models"
    spec = load_spec(folder)
    start = time.perf_counter()
    data = load_dataset(folder, spec)
    digest = fingerprint(folder, spec)
    load_seconds = time.perf_counter() - start
    runtime.set_torch_threads(TrainerSettings.model_fields["torch_threads"].default)  # as the trainer starts
    trained = pipeline.train(spec, data, fingerprint=digest)
    start = time.perf_counter()
    Publisher(repository).publish(trained.manifest, trained.onnx_files, keep=5)
    publish_seconds = time.perf_counter() - start
    phases = {"load": load_seconds, **trained.durations, "publish": publish_seconds}
    total = sum(phases.values())
    group = trained.manifest.groups[0]
    served_auc = roc_auc_score(labels, onnx_scores(onnx_session(trained.onnx_files[group.onnx_file]), test))

    # What the fold models add: the served model alone, as `fit` trains it.
    start = time.perf_counter()
    AutoencoderLearner().fit(data.features)
    alone_seconds = time.perf_counter() - start

    print(f"1. train + publish: autoencoder on {rows:,} x {features}, the trainer's defaults")
    print("   " + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()) + f"; total {total:.1f}s")
    print(
        f"   train: the served model and {group.calibration.folds} fold models side by side, "
        f"{int(group.metrics['epochs'])} epochs (early stopping); the served model alone {alone_seconds:.1f}s"
    )
    probe = ", ".join(f"{t} thread{'s' * (t > 1)} {us:.0f} µs/step" for t, us in sorted(per_step.items()))
    print(
        f"   baseline: the seeds' recipe as a bare torch loop ({AE_EPOCHS} epochs, batch {AE_BATCH}, "
        f"{threads} thread{'s' * (threads > 1)}; probe: {probe}) {bare_seconds:.1f}s"
    )
    print(f"   pipeline / bare = {total / bare_seconds:.2f} (target <= 0.5)")
    print(
        f"   held-out ROC-AUC ({len(labels) // 2:,} new normal rows vs as many nudged off the data's structure): "
        f"served model {served_auc:.3f}, bare loop {bare_auc:.3f} (one seed each: on these rows the seed alone "
        "lands either model near 0.82 or near 0.86)"
    )
    print(
        "   quality on real sets: python -m bench.quality --kind autoencoder, and without --kind (auto); "
        "compare the mean AUC per group with bench/README.md"
    )


LANDING_TARGET_SECONDS = 2.0  # landing -> serving, training excluded, beyond the debounce


def _log_time(process: ServiceProcess, event: str, timeout: float = 120.0, **fields: object) -> float:
    """time.time() of the first JSON log line `event` (with `fields`) the process writes."""
    deadline = time.monotonic() + timeout
    while True:
        for line in process.events(event):
            if all(line.get(k) == v for k, v in fields.items()):
                return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{process.module} logged no {event!r} {fields or ''}")
        time.sleep(0.01)


def _land_once(root: Path, repository: Path, detector: ServiceProcess, debounce: float) -> dict[str, float]:
    """One trainer started afresh (its first job is the one that used to pay the lazy imports),
    left to finish its start-up prewarm, then a dataset folder renamed into its data volume
    (written, then renamed, as datasets land); the times of each step of the way, in seconds."""
    data_volume = root / "data"
    (data_volume / "datasets").mkdir(parents=True)
    name = root.name
    trainer = ServiceProcess(
        "oddity.trainer.main",
        [
            "--data-volume",
            str(data_volume),
            "--model-repository",
            str(repository),
            "--detectors",
            json.dumps([detector.target]),
            "--log-level",
            "debug",
        ],
    ).start()
    try:
        trainer.wait_ready("oddity.v1.Trainer")
        _log_time(trainer, "imports prewarmed")
        staged = root / "staging" / name
        write_dataset(staged, table(5000, 20), {"kind": "autoencoder", "params": {"epochs": 3}}, debounce)
        landed = time.time()
        staged.rename(data_volume / "datasets" / name)
        with channel(detector.target) as ch:
            stub = detector_pb2_grpc.DetectorStub(ch)
            while not any(
                m.name == name and m.serving_version for m in stub.ListModels(detector_pb2.ListModelsRequest()).models
            ):
                time.sleep(0.005)
        serving = time.time()
        history = [json.loads(line) for line in (data_volume / ".oddity" / "history.jsonl").read_text().splitlines()]
        started = next(e for e in history if e["event_type"] == "TRAINING_STARTED")
        done = next(e for e in history if e["event_type"] == "TRAINING_COMPLETED")
        detected = _log_time(trainer, "dataset files changed", datasets=[name])
        job_start = datetime.fromisoformat(started["timestamp"]).timestamp()
        published = _log_time(trainer, "version published", model=name)
        loaded = _log_time(detector, "version loaded", model=name)
        prewarmed = trainer.events("imports prewarmed")[0]
    finally:
        trainer.terminate()
    training = done["details"]["phase_seconds"]["train"]
    return {
        "detect": detected - landed,
        "job start": job_start - detected,
        "training": training,
        "publish": published - job_start - training,  # the job's other stages, to the version written
        "serving": loaded - published,
        "total": serving - landed,
        "prewarm": prewarmed["seconds"],
    }


def bench_landing(root: Path, debounce: float, landings: int) -> None:
    repository = root / "landing" / "models"
    repository.mkdir(parents=True)
    # The detector polls the repository only every 30 s: a version serving sooner was sent by LoadModel.
    detector = ServiceProcess(
        "oddity.detector.main", ["--model-repository", str(repository), "--poll-interval-seconds", "30"]
    ).start()
    try:
        rounds = [
            _land_once(root / "landing" / f"landing-{i}", repository, detector, debounce) for i in range(landings)
        ]
    finally:
        detector.terminate()
    median = {step: float(np.median([r[step] for r in rounds])) for step in rounds[0]}
    beyond = median["total"] - median["training"] - debounce
    verdict = "met" if beyond <= LANDING_TARGET_SECONDS else "NOT met"
    steps = ("detect", "job start", "training", "publish", "serving")
    print(f"2. data file landing -> version serving in the detector, medians of {landings} landings")
    print(
        "   split: the file detected, the job started (the debounce and the look at the files), its "
        "training, its other stages to the version written, the detector serving it"
    )
    for label, figures in [("median", median), *((f"landing {i + 1}", r) for i, r in enumerate(rounds))]:
        split = " -> ".join(f"{step} {figures[step]:.2f}s" for step in steps)
        print(f"   {label}: {split}; total {figures['total']:.2f}s (ListModels)")
    print(
        f"   without training {median['total'] - median['training']:.2f}s; baseline: the debounce {debounce:.2f}s; "
        f"beyond it {beyond:.2f}s (target <= {LANDING_TARGET_SECONDS:g} s): {verdict}"
    )
    print(f"   paid at trainer start instead, in the background before data lands: imports {median['prewarm']:.2f}s")


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


def _session_seconds(onnx_bytes: bytes, level: ort.GraphOptimizationLevel | None = None) -> tuple[float, object]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if level is not None:
        options.graph_optimization_level = level
    start = time.perf_counter()
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    return time.perf_counter() - start, session


def _run_seconds(session, rows: np.ndarray) -> tuple[float, np.ndarray]:
    scores = onnx_scores(session, rows)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        onnx_scores(session, rows)
        timings.append(time.perf_counter() - start)
    return float(np.median(timings)), scores


def bench_isolation_forest(rows: int, features: int, trees: int) -> None:
    x = normal_rows(rows, features, seed=0)
    sample = held_out(1000, features)[0]
    start = time.perf_counter()
    learner = IsolationForestLearner(n_estimators=trees).fit(x)
    fit_seconds = time.perf_counter() - start
    reference = learner.anomaly_scores(sample)[0]
    per_100 = 100 / trees

    start = time.perf_counter()
    direct = learner.to_onnx()
    build_seconds = time.perf_counter() - start
    session_seconds, session = _session_seconds(direct)
    run_seconds, scores = _run_seconds(session, sample)
    direct_gap = float(np.max(np.abs(scores - reference)))

    start = time.perf_counter()
    converted = _SklearnDetector.to_onnx(learner)  # skl2onnx, as the trainer exported before
    convert_seconds = time.perf_counter() - start
    converted_session_seconds, converted_session = _session_seconds(converted)
    unoptimized_seconds, _ = _session_seconds(converted, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    converted_run_seconds, converted_scores = _run_seconds(converted_session, sample)
    converted_gap = float(np.max(np.abs(converted_scores - reference)))

    print(f"4. isolation forest, {trees} trees on {rows:,} x {features} (fit {fit_seconds:.1f}s): ONNX per 100 trees")
    print(
        f"   one TreeEnsembleRegressor from the trees' arrays: build {build_seconds * per_100:.3f}s, "
        f"session {session_seconds * per_100:.3f}s, {len(sample):,} rows {run_seconds * 1e3 * per_100:.1f} ms, "
        f"{len(direct) / 1e3 * per_100:.0f} kB, max |ONNX - scikit-learn| {direct_gap:.1e}"
    )
    print(
        f"   baseline skl2onnx convert_sklearn: build {convert_seconds * per_100:.2f}s, "
        f"session {converted_session_seconds * per_100:.3f}s ({unoptimized_seconds * per_100:.3f}s with graph "
        f"optimizations off), {len(sample):,} rows {converted_run_seconds * 1e3 * per_100:.1f} ms, "
        f"{len(converted) / 1e3 * per_100:.0f} kB, max |ONNX - scikit-learn| {converted_gap:.1e}"
    )
    print(
        f"   build + session: {(build_seconds + session_seconds) * per_100:.3f}s vs "
        f"{(convert_seconds + converted_session_seconds) * per_100:.2f}s per 100 trees"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--trees", type=int, default=100, help="isolation forest trees (skl2onnx's time grows faster)")
    parser.add_argument("--debounce", type=float, default=0.5)
    parser.add_argument("--landings", type=int, default=3, help="landings measured (a fresh trainer each)")
    parser.add_argument("--skip-serving", action="store_true", help="run 1 and 4 only (no services started)")
    parser.add_argument("--landing-only", action="store_true", help="run 2 only")
    args = parser.parse_args()
    print(describe(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.landing_only:
            bench_landing(root, args.debounce, args.landings)
            return
        bench_training(root, args.rows, args.features)
        if not args.skip_serving:
            bench_landing(root, args.debounce, args.landings)
            bench_scoring(root, args.rows, args.features)
        bench_isolation_forest(args.rows, args.features, args.trees)


if __name__ == "__main__":
    main()
