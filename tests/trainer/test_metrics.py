"""The trainer's /metrics: every run counted by dataset and outcome with its duration, the
rows of the last run, the last success, failures in a row, and the live version with what its
validation recorded (after a threshold move and a restart too)."""

import time

import pytest

from oddity.common import bundle
from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets
from tests.support.waiting import wait_for
from tests.trainer.test_end_to_end import decision_log
from tests.trainer.test_robustness import run_job

MANUAL = {"policy": "manual"}


def live_figures(trainer, dataset: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.labels["group"], s.labels["metric"]): s.value
        for family in text_string_to_metric_families(trainer.metrics_text())
        for s in family.samples
        if s.name == "oddity_trainer_live_validation" and s.labels["dataset"] == dataset
    }


@pytest.fixture
def trainer(data_volume, repository):
    handle = start_trainer(data_volume, repository)
    yield handle
    handle.close()


def test_a_published_run(trainer, data_volume, repository):
    # The model's name differs from the dataset folder's: both label what serves.
    spec = {"name": "sensor-model", "sources": [{"path": "*.csv"}], "retrain": MANUAL}
    datasets.write_dataset(data_volume, "sensors", spec, {"rows.csv": datasets.sensor_frame(300)})
    before = time.time()
    job = run_job(trainer, "sensors")
    after = time.time()
    assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED and job.published_version == 1

    def value(name, **labels):
        return trainer.metric(name, dataset="sensors", **labels)

    assert value("oddity_trainer_jobs_total", outcome="succeeded") == 1
    assert value("oddity_trainer_job_seconds_count", outcome="succeeded") == 1
    assert 0 < value("oddity_trainer_job_seconds_sum", outcome="succeeded") < after - before
    assert value("oddity_trainer_last_run_rows") == 300
    assert before < value("oddity_trainer_last_success_timestamp_seconds") < after
    assert value("oddity_trainer_consecutive_failures") == 0
    assert value("oddity_trainer_live_version", model="sensor-model") == 1

    # What the validation recorded in the manifest, per group.
    group = bundle.read_manifest(repository / "sensor-model" / "1").groups[0]
    expected = {
        ("all", "threshold_percentile"): 95.0,
        ("all", "expected_anomaly_rate"): group.calibration.expected_anomaly_rate,
        ("all", "cross_validated_anomaly_rate"): group.calibration.cross_validated_anomaly_rate,
        ("all", "calibration_rows"): 300.0,
        **{("all", metric): v for metric, v in group.metrics.items()},
    }
    assert group.calibration.expected_anomaly_rate == pytest.approx(0.05)
    assert live_figures(trainer, "sensors") == pytest.approx(expected)

    # A threshold move publishes version 2: the live version follows at once, the figures
    # with the next scan.
    trainer.stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="sensors", percentile=80))
    assert value("oddity_trainer_live_version", model="sensor-model") == 2
    wait_for(lambda: live_figures(trainer, "sensors")[("all", "threshold_percentile")] == 80, what="the new figures")
    moved = bundle.read_manifest(repository / "sensor-model" / "2").groups[0]
    assert moved.calibration.expected_anomaly_rate == pytest.approx(0.2)
    expected = {
        **expected,
        ("all", "threshold_percentile"): 80.0,
        ("all", "expected_anomaly_rate"): moved.calibration.expected_anomaly_rate,
    }
    assert live_figures(trainer, "sensors") == pytest.approx(expected)

    # After a restart: the live version and its figures from the repository, the last
    # success from the history.
    success = value("oddity_trainer_last_success_timestamp_seconds")
    trainer.close()
    again = start_trainer(data_volume, repository)
    try:
        wait_for(lambda: again.metric("oddity_trainer_live_version", dataset="sensors") == 2, what="the live version")
        assert again.metric("oddity_trainer_live_version", dataset="sensors", model="sensor-model") == 2
        assert live_figures(again, "sensors") == pytest.approx(expected)
        assert again.metric("oddity_trainer_last_success_timestamp_seconds", dataset="sensors") == pytest.approx(
            success, abs=1.0
        )
    finally:
        again.close()


@pytest.mark.slow
def test_failures_in_a_row_then_a_success(data_volume, repository):
    trainer = start_trainer(data_volume, repository, scan_interval_seconds=0.2, retry_backoff_seconds=1.0)
    try:
        spec = {"sources": [{"path": "*.csv"}], "retrain": {"debounce_seconds": 0}}
        folder = datasets.write_dataset(data_volume, "flaky", spec, {"rows.csv": b""})

        def value(name, **labels):
            return trainer.metric(name, dataset="flaky", **labels)

        # Automatic runs: the first at once, the retry after the backoff; each fails on the file.
        for failures in (1, 2):
            wait_for(lambda n=failures: value("oddity_trainer_jobs_total", outcome="failed") == n, what="a failed run")
            assert value("oddity_trainer_consecutive_failures") == failures
            assert value("oddity_trainer_job_seconds_count", outcome="failed") == failures

        fixed = folder / "rows.csv.partial"  # never read: renamed into place whole
        datasets.sensor_frame(300).to_csv(fixed, index=False)
        fixed.replace(folder / "rows.csv")
        wait_for(lambda: value("oddity_trainer_jobs_total", outcome="succeeded") == 1, what="the fixed data to train")
        assert value("oddity_trainer_consecutive_failures") == 0
        assert value("oddity_trainer_last_run_rows") == 300
        assert value("oddity_trainer_live_version", model="flaky") == 1
        assert value("oddity_trainer_jobs_total", outcome="failed") == 2

        # Unchanged data on Train: skipped, counted as such, no failure.
        assert run_job(trainer, "flaky").state == trainer_pb2.JOB_STATE_SKIPPED
        assert value("oddity_trainer_jobs_total", outcome="skipped") == 1
        assert value("oddity_trainer_job_seconds_count", outcome="skipped") == 1
        assert value("oddity_trainer_consecutive_failures") == 0
    finally:
        trainer.close()


def test_a_model_the_gate_refuses_is_rejected(trainer, data_volume):
    # The gate refuses every model of this spec: a 95th-percentile threshold flags ~5%.
    spec = {"sources": [{"path": "*.csv"}], "validation": {"anomaly_rate": [0.5, 0.9]}, "retrain": MANUAL}
    datasets.write_dataset(data_volume, "strict", spec, {"rows.csv": datasets.sensor_frame(300)})
    job = run_job(trainer, "strict")
    assert job.state == trainer_pb2.JOB_STATE_FAILED and "outside validation.anomaly_rate" in job.message

    def value(name, **labels):
        return trainer.metric(name, dataset="strict", **labels)

    assert value("oddity_trainer_jobs_total", outcome="rejected") == 1
    assert value("oddity_trainer_job_seconds_count", outcome="rejected") == 1
    assert value("oddity_trainer_jobs_total", outcome="failed") == 0
    assert value("oddity_trainer_consecutive_failures") == 1
    assert value("oddity_trainer_last_run_rows") == 300
    assert value("oddity_trainer_live_version", model="strict") == 0  # nothing published


def test_a_classifier_shows_its_held_out_accuracy(trainer, data_volume, repository):
    spec = {
        "sources": [{"path": "decisions.csv"}],
        "features": ["frustumCoverage", "occlusionRatio", "meanVisibleDistance", "deviceFPS", "deviceCPULoad"],
        "label": "decisionLOD",
        "model": {"kind": "logistic"},
        "min_samples": 100,
        "retrain": MANUAL,
    }
    datasets.write_dataset(data_volume, "lod", spec, {"decisions.csv": decision_log(600, seed=0)})
    assert run_job(trainer, "lod").state == trainer_pb2.JOB_STATE_SUCCEEDED
    group = bundle.read_manifest(repository / "lod" / "1").groups[0]
    figures = live_figures(trainer, "lod")
    assert set(figures) == {
        ("all", "accuracy"),
        ("all", "balanced_accuracy"),
        ("all", "macro_f1"),
        ("all", "expected_calibration_error"),
        ("all", "parity_max_abs_diff"),
    }
    assert figures[("all", "balanced_accuracy")] == pytest.approx(group.metrics["balanced_accuracy"])
    assert figures[("all", "accuracy")] == pytest.approx(group.metrics["accuracy"])
