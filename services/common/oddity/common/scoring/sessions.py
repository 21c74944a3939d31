"""ONNX Runtime sessions for a verified version: built with one set of session options (the
detector's and every in-process scorer's), checked against the graph contract (input `input`
[N, D]; output `score` or `probabilities`; optional `feature_errors`; `predicted_score` when
the manifest names a score column) and warmed up, so a version that cannot serve fails here,
before any row is scored.

A row's numbers must not depend on the threads that score it: ONNX Runtime's tree ensembles
sum their trees in another order with more than one intra-op thread (a random forest's class
flipped on one row in 10,000 between one and two threads). So every session runs on one
intra-op thread, and a call with many rows is split into contiguous parts run side by side
(`run_rows`). The parts start at multiples of ROW_ALIGNMENT rows: some kernels give a row's
last bit by its position in the call (a kNN graph's ReduceMean, period 4 on AVX-512 here),
which a part starting at a multiple of 64 keeps.

A request's memory is bounded too: each version's manifest declares the scratch memory a row
takes while its graph runs (`scratch_bytes_per_row`, e.g. about 320 KB for a kNN graph with
20,000 reference rows), and runs take as many rows as the budget allows
(`SessionConfig.rows_per_run`); a call too large for even the smallest run is refused with
RESOURCE_EXHAUSTED. A call of several runs ends each thread's last run with the arena shrunk,
so the memory returns after the call instead of staying with ONNX Runtime.

Reason to change: how ONNX Runtime runs the graphs (session options, threads, the graph
contract's names and shapes, warm-up).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from oddity.common import bundle
from oddity.common.bundle.contract import PREDICTED_SCORE_OUTPUT
from oddity.common.errors import ResourceExhausted
from oddity.v1 import manifest_pb2

# Parts of a split call start at multiples of this many rows (see the module docstring).
ROW_ALIGNMENT = 64
# A call is split only when each part gets at least this many rows (a thread hop costs more).
MIN_PART_ROWS = 512
# Rows one ONNX Runtime run takes when the manifest declares no scratch memory per row (bundles
# published before it did): a kNN graph holds a few rows x reference matrices (65,536 rows
# against 20,000 reference rows took the detector to 16 GB, and its arena kept them).
UNDECLARED_RUN_ROWS = 1024
# ... and at most, whatever the declared cost (it is an estimate; this bounds a wrong one).
MAX_RUN_ROWS = 16384
# The default scratch memory budget of one call's runs (the detector's run_memory_budget_mb).
RUN_MEMORY_BUDGET_BYTES = 128 << 20
# ONNX Runtime releases its arena's free chunks at the end of a run given these options.
_SHRINK_ARENA = ort.RunOptions()
_SHRINK_ARENA.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")


class ModelLoadError(Exception):
    """A verified version that still cannot be served (bad graph, wrong inputs or outputs)."""


@dataclass(frozen=True)
class SessionConfig:
    """How ONNX Runtime sessions are built and how many threads share a call's rows."""

    # Threads over which the rows of a small call are split (one: no thread wake-ups).
    intra_op_threads: int = 1
    # ... and those of a large call (the detector's large requests, on a worker).
    bulk_intra_op_threads: int = 2
    # Spinning threads burn a core each while idle; off leaves the CPU to gRPC.
    allow_spinning: bool = False
    warmup_batch_size: int = 64
    # Scratch memory one call's runs may take together (see the module docstring).
    run_memory_budget_bytes: int = RUN_MEMORY_BUDGET_BYTES

    def threads(self, bulk: bool) -> int:
        return self.bulk_intra_op_threads if bulk else self.intra_op_threads

    def rows_per_run(self, scratch_bytes_per_row: int, rows: int, threads: int, model: str, group: str) -> int:
        """Rows one run of a call with `rows` rows on `threads` threads may take, so that the runs
        side by side stay within the budget; raises ResourceExhausted naming the model and group
        when even the smallest run (ROW_ALIGNMENT rows, or the whole call if fewer) would not."""
        if scratch_bytes_per_row <= 0:
            return UNDECLARED_RUN_ROWS
        smallest = min(rows, ROW_ALIGNMENT)
        if smallest * scratch_bytes_per_row > self.run_memory_budget_bytes:
            raise ResourceExhausted(
                f"scoring {smallest} rows at once with model {model!r} (group {group!r}) takes "
                f"{_megabytes(smallest * scratch_bytes_per_row)} of scratch memory, above the run "
                f"memory budget of {_megabytes(self.run_memory_budget_bytes)} (run_memory_budget_mb)"
            )
        per_thread = self.run_memory_budget_bytes // (max(threads, 1) * scratch_bytes_per_row)
        return max(min(per_thread, MAX_RUN_ROWS), smallest)

    def options(self) -> ort.SessionOptions:
        """The options of every session; numbers depend on them (one intra-op thread: see the
        module docstring), so the detector and in-process scorers share them."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        options.log_severity_level = 3
        return options


@dataclass(frozen=True, slots=True)
class GroupSessions:
    """The session of one active group, ready to run (from several threads at once)."""

    session: ort.InferenceSession
    has_feature_errors: bool  # the graph also returns `feature_errors` [N, D]
    has_predicted_score: bool = False  # a classifier's regression head: `predicted_score` [N]


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """One process-wide pool per thread count (parts never wait on other parts: no deadlock)."""
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="oddity-rows")
        return pool


def run_rows(
    session: ort.InferenceSession,
    outputs: Sequence[str],
    rows: np.ndarray,
    threads: int = 1,
    rows_per_run: int = UNDECLARED_RUN_ROWS,
) -> list[np.ndarray]:
    """The session's `outputs` for rows [N, D]; a call with many rows is split into aligned
    contiguous parts of at most `rows_per_run` rows (`SessionConfig.rows_per_run`), run side by
    side on `threads` > 1, with the same numbers as one call."""
    n = rows.shape[0]
    parts = min(threads, n // MIN_PART_ROWS) if threads > 1 and n >= 2 * MIN_PART_ROWS else 1
    if parts == 1 and n <= rows_per_run:
        return session.run(list(outputs), {bundle.INPUT_NAME: rows})
    even = -(-n // parts)
    step = -(-even // ROW_ALIGNMENT) * ROW_ALIGNMENT
    if step > rows_per_run:
        step = max(rows_per_run // ROW_ALIGNMENT, 1) * ROW_ALIGNMENT
    starts = range(0, n, step)
    # Each thread runs a contiguous share of the parts, its last run shrinking the arena.
    per_thread = -(-len(starts) // parts)
    shares = [starts[i : i + per_thread] for i in range(0, len(starts), per_thread)]

    def run_share(share: range) -> list[list[np.ndarray]]:
        return [
            session.run(
                list(outputs),
                {bundle.INPUT_NAME: rows[start : start + step]},
                _SHRINK_ARENA if start == share[-1] else None,
            )
            for start in share
        ]

    if len(shares) == 1:
        results = run_share(shares[0])
    else:
        results = [result for share in _pool(threads).map(run_share, shares) for result in share]
    return [np.concatenate([result[i] for result in results]) for i in range(len(outputs))]


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
        session = ort.InferenceSession(onnx, config.options(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        raise ModelLoadError(f"group {group.name!r}: ONNX Runtime cannot load {group.onnx_file}: {exc}") from exc
    has_feature_errors = _check_signature(group.name, session, dimension, is_classifier)
    if score_head and PREDICTED_SCORE_OUTPUT not in {o.name for o in session.get_outputs()}:
        raise ModelLoadError(
            f"group {group.name!r}: the manifest names a score column but the graph has no "
            f"{PREDICTED_SCORE_OUTPUT!r} output"
        )
    loaded = GroupSessions(session, has_feature_errors, score_head)
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
    """Run the session once per batch shape so the first request pays no set-up cost, and
    prove the outputs have the promised shapes."""
    session = loaded.session
    for n in (1, batch_size):
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


def _megabytes(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MB"
