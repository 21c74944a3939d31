"""ONNX Runtime sessions for a verified version: built with the detector's session options,
checked against the graph contract (input `input` [N, D]; output `score` or `probabilities`;
optional `feature_errors`; `predicted_score` when the manifest names a score column) and
warmed up, so a version that cannot serve fails here, before any request sees it.

Reason to change: how ONNX Runtime runs the graphs (session options, the graph contract's
names and shapes, warm-up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from oddity.common import bundle
from oddity.common.bundle.contract import PREDICTED_SCORE_OUTPUT
from oddity.v1 import manifest_pb2


class ModelLoadError(Exception):
    """A verified version that still cannot be served (bad graph, wrong inputs or outputs)."""


@dataclass(frozen=True)
class SessionConfig:
    """How ONNX Runtime sessions are built."""

    intra_op_threads: int = 1
    # Large requests get a second session with more threads: shorter latency for big batches,
    # while one-row calls keep the single-threaded session (no thread wake-ups).
    bulk_intra_op_threads: int = 2
    # Spinning threads burn a core each while idle; off leaves the CPU to gRPC.
    allow_spinning: bool = False
    warmup_batch_size: int = 64

    def options(self, threads: int) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        options.log_severity_level = 3
        return options


@dataclass(frozen=True, slots=True)
class GroupSessions:
    """The sessions of one active group, ready to run."""

    session: ort.InferenceSession  # small requests, on the event loop
    bulk_session: ort.InferenceSession  # large requests, on a worker (the same session unless threads differ)
    has_feature_errors: bool  # the graph also returns `feature_errors` [N, D]
    has_predicted_score: bool = False  # a classifier's regression head: `predicted_score` [N]


def load_sessions(
    manifest: manifest_pb2.ModelManifest, onnx: Mapping[str, bytes], config: SessionConfig
) -> dict[str, GroupSessions]:
    """Sessions for every active group of a verified version, by group name; raises
    ModelLoadError naming the group when one cannot serve."""
    is_classifier = manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION
    dimension = int(manifest.input_dimension)
    classes = list(manifest.class_labels)
    sessions = {}
    for group in bundle.active_groups(manifest):
        sessions[group.name] = _load_group(
            group, onnx[group.name], config, dimension, is_classifier, classes, bool(manifest.score_column)
        )
    return sessions


def _load_group(
    group: manifest_pb2.ModelGroup,
    onnx: bytes,
    config: SessionConfig,
    dimension: int,
    is_classifier: bool,
    classes: list[str],
    score_head: bool,
) -> GroupSessions:
    try:
        session = ort.InferenceSession(
            onnx, config.options(config.intra_op_threads), providers=["CPUExecutionProvider"]
        )
        bulk_session = session
        if config.bulk_intra_op_threads != config.intra_op_threads:
            bulk_session = ort.InferenceSession(
                onnx, config.options(config.bulk_intra_op_threads), providers=["CPUExecutionProvider"]
            )
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        raise ModelLoadError(f"group {group.name!r}: ONNX Runtime cannot load {group.onnx_file}: {exc}") from exc
    has_feature_errors = _check_signature(group.name, session, dimension, is_classifier)
    if score_head and PREDICTED_SCORE_OUTPUT not in {o.name for o in session.get_outputs()}:
        raise ModelLoadError(
            f"group {group.name!r}: the manifest names a score column but the graph has no "
            f"{PREDICTED_SCORE_OUTPUT!r} output"
        )
    loaded = GroupSessions(session, bulk_session, has_feature_errors, score_head)
    _warm_up(group.name, loaded, config.warmup_batch_size, dimension, is_classifier, classes)
    return loaded


def _check_signature(group: str, session: ort.InferenceSession, dimension: int, is_classifier: bool) -> bool:
    """Prove the graph takes [N, D] rows and has the required output; returns whether it
    reports per-feature errors."""
    inputs = {i.name: i for i in session.get_inputs()}
    if bundle.INPUT_NAME not in inputs:
        raise ModelLoadError(f"group {group!r}: graph has no input named {bundle.INPUT_NAME!r}")
    shape = inputs[bundle.INPUT_NAME].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != dimension):
        raise ModelLoadError(f"group {group!r}: input shape {shape} does not take [N, {dimension}] rows")
    outputs = {o.name for o in session.get_outputs()}
    required = bundle.PROBABILITIES_OUTPUT if is_classifier else bundle.SCORE_OUTPUT
    if required not in outputs:
        raise ModelLoadError(f"group {group!r}: graph has no output named {required!r}")
    return bundle.FEATURE_ERRORS_OUTPUT in outputs


def _warm_up(
    group: str, loaded: GroupSessions, batch_size: int, dimension: int, is_classifier: bool, classes: list[str]
) -> None:
    """Run the sessions once per batch shape so the first request pays no set-up cost, and
    prove the outputs have the promised shapes."""
    runs = [(loaded.session, 1), (loaded.session, batch_size), (loaded.bulk_session, batch_size)]
    for session, n in runs:
        rows = np.zeros((n, dimension), dtype=np.float32)
        try:
            outputs = session.run(None, {bundle.INPUT_NAME: rows})
        except Exception as exc:
            raise ModelLoadError(f"group {group!r}: warm-up failed: {exc}") from exc
        by_name = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
        if is_classifier:
            shape = np.shape(by_name[bundle.PROBABILITIES_OUTPUT])
            if shape != (n, len(classes)):
                raise ModelLoadError(
                    f"group {group!r}: probabilities output has shape {shape}, "
                    f"expected [N, {len(classes)}] for classes {classes}"
                )
            if loaded.has_predicted_score and np.shape(by_name[PREDICTED_SCORE_OUTPUT]) != (n,):
                raise ModelLoadError(f"group {group!r}: {PREDICTED_SCORE_OUTPUT} output is not [N]")
            continue
        score = np.asarray(by_name[bundle.SCORE_OUTPUT])
        if score.reshape(-1).shape != (n,):
            raise ModelLoadError(f"group {group!r}: score output has shape {score.shape} for {n} rows")
        if loaded.has_feature_errors and np.shape(by_name[bundle.FEATURE_ERRORS_OUTPUT]) != (n, dimension):
            raise ModelLoadError(f"group {group!r}: feature_errors output is not [N, {dimension}]")
