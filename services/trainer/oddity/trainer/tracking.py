"""Experiment tracking with MLflow, when it is installed (`oddity-trainer[tracking]`) and a
tracking URI is set (the trainer's `mlflow_tracking_uri`, else MLFLOW_TRACKING_URI): each
training job is one MLflow run in the experiment `oddity/<model>` holding the job's
parameters, every epoch's figures (step = epoch), the held-out evaluation and the exported
ONNX graphs with the manifest as artifacts. A resumed job goes on in its run.

Tracking is an extra: without MLflow or a URI every call is a no-op, and a tracking server
that fails is logged once per job and then left alone; the job itself never fails for it
(the history log holds the same figures).

Reason to change: what a training run tells MLflow, and how tracking stays optional.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oddity.common import bundle
from oddity.common.logging import get_logger

log = get_logger("oddity.trainer.tracking")

EXPERIMENT_PREFIX = "oddity/"
MAX_PARAM_CHARS = 6000  # MLflow refuses longer parameter values


def _mlflow_client_class() -> Any | None:
    """MLflow's client class, or None when MLflow is not installed (imported lazily: the
    trainer runs without it)."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        return None
    return MlflowClient


class JobTracking:
    """One job's MLflow run; every method is a no-op once tracking is off for the job."""

    def __init__(self, client: Any = None, run_id: str = "", job_id: str = "") -> None:
        self._client = client
        self.run_id = run_id
        self._job_id = job_id

    @property
    def active(self) -> bool:
        return self._client is not None

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> None:
        if self._client is None:
            return
        try:
            getattr(self._client, method)(self.run_id, *args, **kwargs)
        except Exception as exc:  # a tracking server that fails must not fail the job
            log.warning(
                "experiment tracking failed; the job goes on without it",
                job_id=self._job_id,
                step=what,
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            self._client = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self._client is None:
            return
        from mlflow.entities import Param

        values = [Param(str(k), _param_text(v)) for k, v in sorted(params.items())]
        self._call("params", "log_batch", params=values)

    def log_metrics(self, figures: Mapping[str, float], step: int | None = None) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        values = [Metric(str(k), float(v), stamp, step or 0) for k, v in sorted(figures.items())]
        self._call("metrics", "log_batch", metrics=values)

    def log_epoch(self, group: str, epoch: int, figures: Mapping[str, float]) -> None:
        """One epoch's figures with step = epoch; groups other than `all` are prefixed."""
        prefix = "" if group in ("", bundle.ALL_GROUP) else f"{group}."
        self.log_metrics({f"{prefix}{k}": v for k, v in figures.items()}, step=epoch)

    def log_model(self, onnx_files: Mapping[str, bytes], manifest_json: str) -> None:
        """The exported graphs and the manifest, under the run's `model/` artifacts."""
        if self._client is None:
            return
        with tempfile.TemporaryDirectory(prefix="oddity-tracking-") as folder:
            for name, content in onnx_files.items():
                (Path(folder) / name).write_bytes(content)
            (Path(folder) / bundle.MANIFEST_FILE).write_text(manifest_json)
            self._call("artifacts", "log_artifacts", folder, artifact_path="model")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._call("tags", "set_tag", key, value)

    def finish(self, state: str) -> None:
        """End the run: FINISHED (published or skipped) or FAILED."""
        self._call("finish", "set_terminated", status=state)
        self._client = None


NO_TRACKING = JobTracking()


class ExperimentTracking:
    """Opens a job's run when tracking is on (see the module docstring)."""

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        self._told_missing = False

    def start(
        self, *, model: str, dataset: str, job_id: str, tags: Mapping[str, str], run_id: str = ""
    ) -> JobTracking:
        """The job's run: a new one, or `run_id` again for a resumed job (a new one when that
        run cannot be found). NO_TRACKING when tracking is off or the server fails."""
        if not self.tracking_uri:
            return NO_TRACKING
        client_class = _mlflow_client_class()
        if client_class is None:
            if not self._told_missing:  # once per trainer: a log line per job would be noise
                log.warning(
                    "experiment tracking is off: MLflow is not installed (pip install 'oddity-trainer[tracking]')",
                    tracking_uri=self.tracking_uri,
                )
                self._told_missing = True
            return NO_TRACKING
        try:
            client = client_class(tracking_uri=self.tracking_uri)
            if run_id:
                try:
                    client.get_run(run_id)
                except Exception:
                    run_id = ""
            if not run_id:
                name = f"{EXPERIMENT_PREFIX}{model}"
                experiment = client.get_experiment_by_name(name)
                if experiment is not None:
                    experiment_id = experiment.experiment_id
                else:
                    try:
                        experiment_id = client.create_experiment(name)
                    except Exception:  # another job created it meanwhile
                        experiment_id = client.get_experiment_by_name(name).experiment_id
                run = client.create_run(experiment_id, run_name=f"{dataset} {job_id}", tags=dict(tags))
                run_id = run.info.run_id
        except Exception as exc:
            log.warning(
                "experiment tracking failed; the job goes on without it",
                job_id=job_id,
                tracking_uri=self.tracking_uri,
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            return NO_TRACKING
        return JobTracking(client, run_id, job_id)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_PARAM_CHARS]
