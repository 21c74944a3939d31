"""Detection quality: Oddity, driven as a user drives it, next to baselines on the same splits.

    python -m bench.quality [--sets letter,wine] [--seeds 3] [--kind KIND] [--quick] [--no-baselines]

Data: the development sets in the anomaly-benchmarks folder (tabular/ and embeddings/, see
its README) plus scikit-learn's wine, breast_cancer and digits (the class with the fewest
rows is the anomaly class; ties: the lowest label). Groups: "tabular" (tabular/ + the
scikit-learn sets) and "embeddings".

Protocol (semi-supervised), per seed: train on 60% of the normal rows, test on the other
normal rows plus every anomaly; large sets are subsampled deterministically (caps printed).

Oddity: one real trainer and one real detector (child processes) on a temporary data volume.
Each (set, seed) becomes `datasets/<set>-s<seed>/dataset.yaml` with only `sources` (plus
`model: {kind}` with --kind) and a CSV of its training normals; `Train(force)` starts it,
`WatchJob` follows it, `Detect` scores the test rows. Runs the validation gate refuses count
as missing. Baselines (bench/quality_baselines.py) run in this process meanwhile, on the
second core: kNN (k=5, mean distance), IsolationForest (200 trees), the seeds' autoencoder
(in->64->8->64->in, 50 epochs) and PyOD's automatic choice (ADEngine) when installed.

Reported: ROC-AUC per set and method (mean over seeds), then per group mean AUC and mean rank
(1 = best within a set, over the sets where every method has a value); for Oddity also the
AUC of the normalized score, the share of test normals flagged at the default threshold
(p95: ~5% expected), gate refusals and training time. JSON: bench/results/quality.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import yaml
from scipy.stats import rankdata
from sklearn import datasets as sk_datasets
from sklearn.metrics import roc_auc_score

from bench.machine import describe
from bench.quality_baselines import BASELINES, PYOD_AUTO, pyod_auto_unavailable, standardize
from bench.recipe_study import StudyRun, print_summary, study_split, summarize
from oddity.v1 import detector_pb2, detector_pb2_grpc, tensor_pb2, trainer_pb2, trainer_pb2_grpc

# The development sets sit beside the repository: ../shared/data/anomaly-benchmarks.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "anomaly-benchmarks"
DEFAULT_OUTPUT = Path("bench/results/quality.json")
GROUPS = ("tabular", "embeddings")  # the benchmark's folders, and the groups results are reported in
SKLEARN_SETS = ("wine", "breast_cancer", "digits")
QUICK_SETS = ("sk_wine", "sk_breast_cancer", "39_vertebral", "20news_3_bert")

TRAIN_SHARE = 0.6
# Caps bound the run (smtp alone has 95k rows; the whole run takes about 2 minutes on 2
# cores); subsets are taken from the seed's permutation, so they are deterministic.
CAP_TRAIN = 3000
CAP_TEST_NORMAL = 2000
CAP_TEST_ANOMALY = 1000

ODDITY, ODDITY_NORMALIZED = "oddity", "oddity-normalized"
JOB_DONE = (trainer_pb2.JOB_STATE_SUCCEEDED, trainer_pb2.JOB_STATE_FAILED, trainer_pb2.JOB_STATE_SKIPPED)
MAX_MESSAGE = 256 * 1024 * 1024
# Services bind 127.0.0.1 on ports the OS picks, metrics included.
LOCAL_ONLY = ["--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0"]


# -- data -------------------------------------------------------------------------------------


@dataclass
class BenchSet:
    name: str
    group: str
    x: np.ndarray  # float32: the exact values the trainer reads back from the CSV
    y: np.ndarray  # bool, True = anomaly


@dataclass
class Split:
    set: BenchSet
    seed: int
    train: np.ndarray
    test: np.ndarray
    y_test: np.ndarray
    contamination: float = 0.0  # share of the training rows that are anomalies
    level: float = 0.0  # the share asked for (--contamination)

    @property
    def dataset(self) -> str:
        dirty = f"-c{round(self.level * 1000):03d}" if self.level else ""
        return f"{self.set.name}-s{self.seed}{dirty}"


def load_sets(root: Path) -> list[BenchSet]:
    sets = []
    for group in GROUPS:
        for path in sorted((root / group).glob("*.npz")):
            with np.load(path, allow_pickle=False) as z:
                sets.append(BenchSet(path.stem, group, z["X"].astype(np.float32), z["y"].astype(bool)))
        if group == "tabular":
            sets.extend(sklearn_sets())
    return sets


def sklearn_sets() -> list[BenchSet]:
    """scikit-learn's bundled sets: the class with the fewest rows is the anomaly class (wine:
    class_2, breast_cancer: malignant, digits: 8), every other class is normal."""
    sets = []
    for name in SKLEARN_SETS:
        bunch = getattr(sk_datasets, f"load_{name}")()
        counts = np.bincount(bunch.target)
        minority = int(np.argmin(counts))  # argmin takes the lowest label on ties
        sets.append(BenchSet(f"sk_{name}", "tabular", bunch.data.astype(np.float32), bunch.target == minority))
    return sets


def select_sets(sets: list[BenchSet], patterns: str, quick: bool) -> list[BenchSet]:
    if patterns:
        wanted = [p.strip().lower() for p in patterns.split(",") if p.strip()]
        return [s for s in sets if any(p in s.name.lower() for p in wanted)]
    if quick:
        return [s for s in sets if s.name in QUICK_SETS]
    return sets


def make_split(bench_set: BenchSet, seed: int, contamination: float = 0.0) -> Split:
    """The seed's split; with `contamination` c, anomalies moved from the test part make up the
    share c of the training rows (at most half of the set's anomalies move; the share reached
    is the split's `contamination`)."""
    rng = np.random.default_rng(seed)
    normals = rng.permutation(np.flatnonzero(~bench_set.y))
    anomalies = rng.permutation(np.flatnonzero(bench_set.y))
    n_train = round(len(normals) * TRAIN_SHARE)
    train = normals[:n_train][:CAP_TRAIN]
    moved = min(round(contamination / (1 - contamination) * len(train)), len(anomalies) // 2)
    test_normal = normals[n_train:][:CAP_TEST_NORMAL]
    test_anomaly = anomalies[moved:][:CAP_TEST_ANOMALY]
    train = np.concatenate([train, anomalies[:moved]])
    test = np.concatenate([test_normal, test_anomaly])
    y_test = np.concatenate([np.zeros(len(test_normal), bool), np.ones(len(test_anomaly), bool)])
    share = moved / len(train)
    return Split(bench_set, seed, bench_set.x[rng.permutation(train)], bench_set.x[test], y_test, share, contamination)


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    # A non-finite score is an extreme one: rank it above every finite score, not drop the row.
    scores = np.asarray(scores, np.float64)
    finite = np.isfinite(scores)
    top = scores[finite].max() + 1.0 if finite.any() else 1.0
    return float(roc_auc_score(y, np.where(finite, scores, top)))


# -- Oddity as a user runs it ------------------------------------------------------------------


@dataclass
class OddityRun:
    state: str
    message: str
    auc: float | None = None
    auc_normalized: float | None = None
    flag_rate: float | None = None  # share of test normals with is_anomaly at the default threshold
    train_seconds: float | None = None  # job wall time, started -> finished
    version: int = 0
    group_metrics: dict[str, float] = field(default_factory=dict)


def start_service(module: str, args: list[str], log_path: Path, timeout: float = 120) -> tuple[subprocess.Popen, int]:
    """Start a service module on an ephemeral port; the port comes from its JSON 'serving' line.
    Output goes to a file, not a pipe, so a chatty service never blocks on a full pipe."""
    with log_path.open("w") as log:  # the child keeps its own descriptor
        command = [sys.executable, "-m", module, *LOCAL_ONLY, *args]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "serving":
                return proc, int(event["port"])
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    tail = "\n".join(log_path.read_text().splitlines()[-20:])
    raise RuntimeError(f"{module} did not start (exit code {proc.poll()}); last output:\n{tail}")


def stop_service(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: the services shut down cleanly
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_dataset(volume: Path, split: Split, kind: str | None) -> None:
    """What a user drops into the data volume: a CSV of normal rows and a spec naming it."""
    folder = volume / "datasets" / split.dataset
    folder.mkdir(parents=True)
    header = ",".join(f"f{i}" for i in range(split.train.shape[1]))
    # %.9g round-trips float32, so the trainer reads back exactly the rows the baselines get.
    np.savetxt(folder / "train.csv", split.train, fmt="%.9g", delimiter=",", header=header, comments="")
    spec: dict[str, Any] = {"sources": [{"path": "train.csv"}]}
    if split.contamination:  # what a user who knows their export is dirty writes
        spec["contamination"] = round(split.contamination, 4)
    if kind:
        spec["model"] = {"kind": kind}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))


def rows_tensor(rows: np.ndarray) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(shape=list(rows.shape), raw_data=np.ascontiguousarray(rows, dtype="<f4").tobytes())


class Oddity:
    """One trainer and one detector for the whole run, on a temporary data volume and model
    repository. The trainer runs with --no-watch and a day-long scan interval: the benchmark
    starts every job itself (Train with force, as small sets are below min_samples), so no
    automatic run races it."""

    def __init__(self, root: Path, kind: str | None) -> None:
        self.root, self.kind = root, kind
        self.volume, self.repository = root / "data", root / "models"
        self.repository.mkdir(parents=True)
        (self.volume / "datasets").mkdir(parents=True)
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Oddity:
        detector, detector_port = start_service(
            "oddity.detector.main", ["--model-repository", str(self.repository)], self.root / "detector.log"
        )
        self.procs.append(detector)
        paths = ["--data-volume", str(self.volume), "--model-repository", str(self.repository)]
        detectors = ["--detectors", json.dumps([f"127.0.0.1:{detector_port}"])]
        only_asked = ["--no-watch", "--scan-interval-seconds", "86400"]
        try:
            trainer, trainer_port = start_service(
                "oddity.trainer.main", [*paths, *detectors, *only_asked], self.root / "trainer.log"
            )
        except BaseException:
            stop_service(detector)
            raise
        self.procs.append(trainer)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        self.detector_channel = grpc.insecure_channel(f"127.0.0.1:{detector_port}", options=options)
        self.trainer_channel = grpc.insecure_channel(f"127.0.0.1:{trainer_port}", options=options)
        self.detector = detector_pb2_grpc.DetectorStub(self.detector_channel)
        self.trainer = trainer_pb2_grpc.TrainerStub(self.trainer_channel)
        return self

    def __exit__(self, *exc: object) -> None:
        self.detector_channel.close()
        self.trainer_channel.close()
        for proc in reversed(self.procs):
            stop_service(proc)

    def submit(self, split: Split) -> str:
        """Drop the dataset and start its job; the trainer queues jobs and runs one at a time."""
        write_dataset(self.volume, split, self.kind)
        return self.trainer.Train(trainer_pb2.TrainRequest(dataset=split.dataset, force=True), timeout=60).job.id

    def wait(self, job_id: str, timeout: float = 1800) -> trainer_pb2.Job:
        for update in self.trainer.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=timeout):
            if update.job.state in JOB_DONE:
                return update.job
        return self.trainer.GetJob(trainer_pb2.GetJobRequest(job_id=job_id), timeout=30).job

    def detect(self, model: str, version: int, rows: np.ndarray) -> detector_pb2.DetectResponse:
        request = detector_pb2.DetectRequest(model=model, version=version, rows=rows_tensor(rows))
        deadline = time.monotonic() + 60
        while True:
            try:
                return self.detector.Detect(request, timeout=120)
            except grpc.RpcError as exc:
                # The trainer tells the detector at publish; if that call was lost, ask it to
                # rescan (it would also find the version on its next poll).
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
                if time.monotonic() > deadline:
                    raise
                self.detector.LoadModel(detector_pb2.LoadModelRequest(model=model), timeout=30)
                time.sleep(0.2)

    def result(self, split: Split, job_id: str) -> OddityRun:
        job = self.wait(job_id)
        seconds = (job.finished_at.ToNanoseconds() - job.started_at.ToNanoseconds()) / 1e9
        state = trainer_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()
        if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
            return OddityRun(state, job.message, train_seconds=seconds)
        response = self.detect(split.dataset, job.published_version, split.test)
        manifest = self.detector.GetModel(detector_pb2.GetModelRequest(model=split.dataset), timeout=30).manifest
        flagged = np.asarray(response.is_anomaly, bool)
        run = OddityRun(
            state,
            job.message,
            auc=auc(split.y_test, np.asarray(response.scores)),
            auc_normalized=auc(split.y_test, np.asarray(response.normalized_scores)),
            flag_rate=float(flagged[~split.y_test].mean()),
            train_seconds=seconds,
            version=job.published_version,
            group_metrics=dict(manifest.groups[0].metrics) if manifest.groups else {},
        )
        # Sixty-odd models would otherwise stay loaded in the detector until the end.
        self.detector.UnloadModel(detector_pb2.UnloadModelRequest(model=split.dataset), timeout=30)
        return run


# -- baselines ---------------------------------------------------------------------------------


def run_baselines(split: Split, methods: list[str]) -> tuple[dict[str, float | None], dict[str, str]]:
    """AUC per baseline on this split (None when it failed), and notes (PyOD's choice, errors)."""
    if not methods:
        return {}, {}
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)  # the trainer has the other core
    train, test = standardize(split.train, split.test)
    aucs: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    with threadpool_limits(1):
        for method in methods:
            try:
                result = BASELINES[method](train, test, split.seed)
            except Exception as exc:  # one broken baseline must not end the run
                aucs[method], notes[method] = None, f"error: {type(exc).__name__}: {exc}"
                continue
            aucs[method] = auc(split.y_test, result.scores)
            if result.note:
                notes[method] = result.note
    return aucs, notes


# -- summaries ---------------------------------------------------------------------------------


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def per_set(runs: list[dict], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Mean over seeds per set and method, plus Oddity's calibration and time."""
    table: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(r["set"] for r in runs):
        mine = [r for r in runs if r["set"] == name]
        table[name] = {
            "group": mine[0]["group"],
            "train_rows": mine[0]["train_rows"],
            "test_rows": mine[0]["test_rows"],
            "test_anomalies": mine[0]["test_anomalies"],
            "features": mine[0]["features"],
            "auc": {m: mean_or_none([r["auc"].get(m) for r in mine]) for m in methods},
            "oddity_flag_rate": mean_or_none([r["oddity"]["flag_rate"] for r in mine]),
            "oddity_train_seconds": mean_or_none([r["oddity"]["train_seconds"] for r in mine]),
            "oddity_missing": sum(r["auc"].get(ODDITY) is None for r in mine),
            "pyod_auto_choice": sorted({r["notes"][PYOD_AUTO] for r in mine if PYOD_AUTO in r["notes"]}),
        }
    return table


def group_summary(runs: list[dict], table: dict[str, dict], ranked: list[str], group: str) -> dict[str, Any]:
    """Mean AUC and mean rank over the group's sets where every ranked method has a value."""
    names = [n for n, row in table.items() if row["group"] == group]
    complete = [n for n in names if all(table[n]["auc"][m] is not None for m in ranked)]
    ranks: dict[str, list[float]] = {m: [] for m in ranked}
    for name in complete:
        aucs = [table[name]["auc"][m] for m in ranked]
        for method, rank in zip(ranked, rankdata([-a for a in aucs]), strict=True):  # ties share a rank
            ranks[method].append(float(rank))
    group_runs = [r for r in runs if r["group"] == group]
    flag_rates = [r["oddity"]["flag_rate"] for r in group_runs if r["oddity"]["flag_rate"] is not None]
    worst = max(group_runs, key=lambda r: r["oddity"]["flag_rate"] or -1.0, default=None)
    times = [r["oddity"]["train_seconds"] for r in group_runs if r["oddity"]["train_seconds"] is not None]
    auc_methods = [*ranked, ODDITY_NORMALIZED] if ODDITY in ranked else ranked
    return {
        "sets": len(names),
        "complete_sets": len(complete),
        "mean_auc": {m: mean_or_none([table[n]["auc"][m] for n in complete]) for m in auc_methods},
        "mean_rank": {m: (float(np.mean(ranks[m])) if ranks[m] else None) for m in ranked},
        "oddity_flag_rate_median": statistics.median(flag_rates) if flag_rates else None,
        "oddity_flag_rate_max": max(flag_rates) if flag_rates else None,
        "oddity_flag_rate_max_at": f"{worst['set']} seed {worst['seed']}" if flag_rates and worst else "",
        "oddity_runs": len(group_runs),
        "oddity_refused": sum(r["oddity"]["state"] != "succeeded" for r in group_runs),
        "oddity_train_seconds_median": statistics.median(times) if times else None,
    }


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(table: dict[str, dict], methods: list[str]) -> None:
    print("\nROC-AUC per set (mean over seeds); flag = test normals flagged at p95 (Oddity); s = training job")
    head = f"  {'set':<22} {'group':<10} {'train':>5} {'test':>5} {'anom':>4} {'D':>5} |"
    print(head + "".join(f" {m[:11]:>11}" for m in methods) + f" | {'flag':>6} {'s':>5}  pyod choice")
    for name, row in table.items():
        missing = f" ({row['oddity_missing']} refused)" if row["oddity_missing"] else ""
        print(
            f"  {name:<22} {row['group']:<10} {row['train_rows']:>5} {row['test_rows']:>5} "
            f"{row['test_anomalies']:>4} {row['features']:>5} |"
            + "".join(f" {fmt(row['auc'][m]):>11}" for m in methods)
            + f" | {fmt(row['oddity_flag_rate'], '.1%'):>6} {fmt(row['oddity_train_seconds'], '.1f'):>5}  "
            + ",".join(row["pyod_auto_choice"])
            + missing
        )


def print_group(group: str, summary: dict[str, Any]) -> None:
    complete = f"{summary['complete_sets']} with every method (mean AUC and rank over those)"
    print(f"\n{group}: {summary['sets']} sets, {complete}")
    print(f"  {'method':<18} {'mean AUC':>8} {'mean rank':>9}")
    for method, value in summary["mean_auc"].items():
        print(f"  {method:<18} {fmt(value):>8} {fmt(summary['mean_rank'].get(method), '.2f'):>9}")
    if summary["oddity_runs"]:
        print(
            f"  Oddity: test normals flagged at p95 median {fmt(summary['oddity_flag_rate_median'], '.1%')}, "
            f"max {fmt(summary['oddity_flag_rate_max'], '.1%')} ({summary['oddity_flag_rate_max_at']}); "
            f"gate refusals {summary['oddity_refused']} of {summary['oddity_runs']} runs; "
            f"median training job {fmt(summary['oddity_train_seconds_median'], '.1f')} s"
        )


# -- the run -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="", help="comma-separated name substrings, e.g. letter,wine")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; --quick: 1)")
    parser.add_argument("--kind", default=None, help="model kind for Oddity (default: no `model` key)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {', '.join(QUICK_SETS)}, 1 seed")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--no-study", action="store_true", help="skip the leave-one-out study of the default's recipe")
    parser.add_argument(
        "--contamination",
        default="0",
        help="comma-separated shares of anomalous training rows, e.g. 0,0.05 (each level is a run)",
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the anomaly-benchmarks folder")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if args.seeds is None:
        args.seeds = 1 if args.quick else 3
    return args


def choose_baselines(disabled: bool) -> tuple[list[str], list[str]]:
    """The baselines to run, and notes about those skipped."""
    if disabled:
        return [], []
    baselines, notes = list(BASELINES), []
    if why := pyod_auto_unavailable():
        baselines.remove(PYOD_AUTO)
        notes.append(why)
        print(f"note: {why}")
    return baselines, notes


def run_record(
    split: Split, run: OddityRun, aucs: dict[str, float | None], notes: dict[str, str], study: StudyRun | None
) -> dict[str, Any]:
    return {
        "set": split.set.name,
        "group": split.set.group,
        "seed": split.seed,
        "contamination": split.contamination,
        "level": split.level,
        "study": asdict(study) if study else None,
        "train_rows": len(split.train),
        "test_rows": len(split.test),
        "test_anomalies": int(split.y_test.sum()),
        "features": split.train.shape[1],
        "auc": {ODDITY: run.auc, ODDITY_NORMALIZED: run.auc_normalized, **aucs},
        "oddity": asdict(run),
        "notes": notes,
    }


def run_study(split: Split) -> StudyRun:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # the trainer has the other core
        return study_split(split.set.name, split.set.group, split.seed, split.train, split.test, split.y_test, auc)


def run_splits(splits: list[Split], baselines: list[str], kind: str | None, study: bool) -> list[dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="oddity-quality-") as tmp, Oddity(Path(tmp), kind) as oddity:
        # Every job is queued first: the trainer works through them on one core while the
        # baselines run here on the other.
        jobs = [oddity.submit(split) for split in splits]
        baseline_results = []
        for i, split in enumerate(splits, 1):
            aucs, notes = run_baselines(split, baselines)
            studied = run_study(split) if study else None
            baseline_results.append((aucs, notes, studied))
            if baselines or studied:
                scores = " ".join(f"{m} {fmt(a)}" for m, a in {**aucs, **(studied.aucs if studied else {})}.items())
                print(f"  [{i}/{len(splits)}] in-process {split.dataset}: {scores}", flush=True)
        for i, (split, job_id) in enumerate(zip(splits, jobs, strict=True), 1):
            run = oddity.result(split, job_id)
            outcome = (
                f"AUC {fmt(run.auc)} (normalized {fmt(run.auc_normalized)}), flagged {fmt(run.flag_rate, '.1%')}"
                if run.state == "succeeded"
                else run.message
            )
            took = fmt(run.train_seconds, ".1f")
            print(f"  [{i}/{len(splits)}] oddity {split.dataset}: {run.state} in {took}s, {outcome}", flush=True)
            runs.append(run_record(split, run, *baseline_results[i - 1]))
    return runs


FLOOR_BASELINES = ("knn", "iforest", "autoencoder")
FLOOR = 0.03  # no set more than this below the best of FLOOR_BASELINES


def floor_report(table: dict[str, dict]) -> list[tuple[str, float, str]]:
    """Sets where Oddity is more than FLOOR below the best of kNN, IsolationForest and the
    seeds' autoencoder: (set, gap, best baseline)."""
    below = []
    for name, row in table.items():
        present = {m: row["auc"].get(m) for m in FLOOR_BASELINES if row["auc"].get(m) is not None}
        if not present or row["auc"].get(ODDITY) is None:
            continue
        best = max(present, key=lambda m: present[m])
        gap = row["auc"][ODDITY] - present[best]
        if gap < -FLOOR:
            below.append((name, gap, best))
    return below


def verdict(groups: dict[str, dict], baselines: list[str]) -> dict[str, Any]:
    """Per group: Oddity's mean AUC minus the best single baseline's."""
    out = {}
    for group, summary in groups.items():
        means = summary["mean_auc"]
        present = {m: means[m] for m in baselines if means.get(m) is not None}
        if not present or means.get(ODDITY) is None:
            continue
        best = max(present, key=lambda m: present[m])
        out[group] = {"best_baseline": best, "margin": means[ODDITY] - present[best]}
    return out


def report_level(runs: list[dict], methods: list[str], baselines: list[str], level: float) -> dict[str, Any]:
    print(f"\n==== training rows anomalous: {level:.0%} ====")
    table = per_set(runs, [*methods, ODDITY_NORMALIZED])
    print_table(table, [*methods, ODDITY_NORMALIZED])
    groups = {g: group_summary(runs, table, methods, g) for g in GROUPS}
    for group, summary in groups.items():
        if summary["sets"]:
            print_group(group, summary)
    margins = verdict(groups, baselines)
    for group, row in margins.items():
        print(f"  {group}: Oddity minus the best baseline ({row['best_baseline']}): {row['margin']:+.3f} mean AUC")
    below = floor_report(table)
    print(f"  sets more than {FLOOR} below the best of {', '.join(FLOOR_BASELINES)}: ", end="")
    print(", ".join(f"{n} ({g:+.3f} vs {b})" for n, g, b in below) or "none")
    studied = [StudyRun(**r["study"]) for r in runs if r.get("study")]
    study = summarize(studied) if studied else None
    if study:
        print_summary(study)
    refused = [r for r in runs if r["oddity"]["state"] != "succeeded"]
    if refused:
        print("\nOddity runs without a model (counted as missing):")
    for run in refused:
        print(f"  {run['set']} seed {run['seed']}: {run['oddity']['state']}: {run['oddity']['message']}")
    return {"groups": groups, "margins": margins, "below_floor": below, "study": study, "sets": table}


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    print(describe())
    print(f"caps per split: train <= {CAP_TRAIN} normal rows ({TRAIN_SHARE:.0%} of the normals), ", end="")
    print(f"test <= {CAP_TEST_NORMAL} normal + {CAP_TEST_ANOMALY} anomalous rows")
    sets = select_sets(load_sets(args.data), args.sets, args.quick)
    if not sets:
        sys.exit("no set matches --sets")
    seeds = list(range(args.seeds))
    levels = [float(c) for c in args.contamination.split(",") if c.strip()]
    baselines, notes = choose_baselines(args.no_baselines)
    methods = [ODDITY, *baselines]
    print(f"oddity: model kind {args.kind or 'default (no model key)'}; baselines: {', '.join(baselines) or 'none'}")
    print(f"{len(sets)} sets x {len(seeds)} seeds x contamination {levels}\n")

    splits = [make_split(s, seed, c) for c in levels for s in sets for seed in seeds]
    runs = run_splits(splits, baselines, args.kind, not args.no_study)
    by_level = {}
    for level in levels:
        mine = [r for r, split in zip(runs, splits, strict=True) if split.level == level]
        by_level[level] = report_level(mine, methods, baselines, level)
    if 0.0 in by_level:
        clean = by_level[0.0]["groups"]
        for level, result in by_level.items():
            for group, summary in result["groups"].items():
                if level and summary["mean_auc"].get(ODDITY) is not None and clean[group]["mean_auc"].get(ODDITY):
                    lost = clean[group]["mean_auc"][ODDITY] - summary["mean_auc"][ODDITY]
                    print(f"{group} at {level:.0%} anomalous training rows: Oddity lost {lost:+.3f} mean AUC")
    wall = time.perf_counter() - started
    print(f"\ntotal wall time {wall:.0f} s")

    report = {
        "machine": describe(),
        "kind": args.kind,
        "seeds": seeds,
        "contamination": levels,
        "caps": {"train": CAP_TRAIN, "test_normal": CAP_TEST_NORMAL, "test_anomaly": CAP_TEST_ANOMALY},
        "train_share": TRAIN_SHARE,
        "methods": methods,
        "notes": notes,
        "wall_seconds": wall,
        "levels": {str(level): result for level, result in by_level.items()},
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
