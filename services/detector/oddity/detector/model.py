"""A loaded model version: one ONNX Runtime session per active group, routing and scoring.

A LoadedModel is immutable once built. Requests take a lease on it; when the registry
swaps in a newer version it retires this one, and the sessions are released as soon as
the last lease is returned, so requests already running finish on the version they began
with.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from oddity.common import bundle
from oddity.common.errors import FailedPrecondition, InvalidArgument
from oddity.detector import scoring
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


@dataclass
class GroupModel:
    """One group of a version: its bounds, its session and its score distribution."""

    name: str
    index: int
    lower: float
    upper: float
    upper_inclusive: bool
    active: bool
    status: str
    session: ort.InferenceSession | None
    bulk_session: ort.InferenceSession | None
    threshold: float
    threshold_percentile: float
    probabilities: np.ndarray
    quantile_values: np.ndarray
    normalized_threshold: float
    has_feature_errors: bool

    def decision(self, percentile: float | None) -> tuple[float, float]:
        """(threshold, normalized threshold): the manifest's, or those of a request percentile."""
        if percentile is None:
            return self.threshold, self.normalized_threshold
        return scoring.threshold_at(percentile, self.probabilities, self.quantile_values), percentile / 100.0

    def contains(self, values: np.ndarray) -> np.ndarray:
        upper_ok = values <= self.upper if self.upper_inclusive else values < self.upper
        return (values >= self.lower) & upper_ok


@dataclass
class Scores:
    """Per-row results of one request."""

    scores: np.ndarray
    normalized: np.ndarray
    is_anomaly: np.ndarray
    thresholds: np.ndarray
    confidences: np.ndarray
    groups: list[str]
    fallback: np.ndarray
    # Present when top-k explanations were asked for: indices, errors, shares, each [N, k].
    explanations: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # Classifiers: predicted class index per row and class probabilities [N, C]; the anomaly
    # columns above are empty and confidences hold the predicted class's probability.
    classes: np.ndarray | None = None
    probabilities: np.ndarray | None = None

    def slice(self, start: int, stop: int) -> Scores:
        """Rows start..stop, for splitting a micro-batch back into its requests."""
        return Scores(
            scores=self.scores[start:stop],
            normalized=self.normalized[start:stop],
            is_anomaly=self.is_anomaly[start:stop],
            thresholds=self.thresholds[start:stop],
            confidences=self.confidences[start:stop],
            groups=self.groups[start:stop],
            fallback=self.fallback[start:stop],
            explanations=None if self.explanations is None else tuple(a[start:stop] for a in self.explanations),
            classes=None if self.classes is None else self.classes[start:stop],
            probabilities=None if self.probabilities is None else self.probabilities[start:stop],
        )


class LoadedModel:
    """A servable model version (see module docstring)."""

    def __init__(self, verified: bundle.VerifiedVersion, config: SessionConfig) -> None:
        manifest = verified.manifest
        self.is_classifier = manifest.task == manifest_pb2.MODEL_TASK_CLASSIFICATION
        self.class_labels = list(manifest.class_labels)
        self.manifest = manifest
        self.name = manifest.name
        self.version = int(manifest.version)
        self.kind = manifest.kind
        self.dimension = int(manifest.input_dimension)
        self.feature_names = list(manifest.feature_names)
        self.routing_key = manifest.routing_key
        self.groups = [self._load_group(i, g, verified.onnx.get(g.name), config) for i, g in enumerate(manifest.groups)]
        self.all_group = next((g for g in self.groups if g.name == bundle.ALL_GROUP and g.active), None)
        self._bounded = [g for g in self.groups if g.name != bundle.ALL_GROUP]
        self._single = self.groups[0] if not self.routing_key else None
        self._lock = threading.Lock()
        self._leases = 0
        self._retired = False
        self._released = threading.Event()

    # -- loading --------------------------------------------------------------------------

    def _load_group(
        self, index: int, group: manifest_pb2.ModelGroup, onnx: bytes | None, config: SessionConfig
    ) -> GroupModel:
        bounds = group.bounds
        active = group.status == manifest_pb2.GROUP_STATUS_ACTIVE
        session = bulk_session = None
        has_feature_errors = False
        if active:
            assert onnx is not None  # load_verified_version returns bytes for every active group
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
                raise ModelLoadError(
                    f"group {group.name!r}: ONNX Runtime cannot load {group.onnx_file}: {exc}"
                ) from exc
            has_feature_errors = self._check_signature(group.name, session)
        probabilities = np.asarray(group.quantiles.probabilities, dtype=np.float64)
        values = np.asarray(group.quantiles.values, dtype=np.float64)
        model = GroupModel(
            name=group.name,
            index=index,
            lower=bounds.lower if bounds.HasField("lower") else -np.inf,
            upper=bounds.upper if bounds.HasField("upper") else np.inf,
            upper_inclusive=bounds.upper_inclusive,
            active=active,
            status=manifest_pb2.GroupStatus.Name(group.status),
            session=session,
            bulk_session=bulk_session,
            threshold=group.threshold,
            threshold_percentile=group.threshold_percentile,
            probabilities=probabilities,
            quantile_values=values,
            normalized_threshold=float(scoring.normalize(np.array([group.threshold]), probabilities, values)[0])
            if active and not self.is_classifier
            else 0.0,
            has_feature_errors=has_feature_errors,
        )
        if active:
            self._warm_up(model, config.warmup_batch_size)
        return model

    def _check_signature(self, group: str, session: ort.InferenceSession) -> bool:
        inputs = {i.name: i for i in session.get_inputs()}
        if bundle.INPUT_NAME not in inputs:
            raise ModelLoadError(f"group {group!r}: graph has no input named {bundle.INPUT_NAME!r}")
        shape = inputs[bundle.INPUT_NAME].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != self.dimension):
            raise ModelLoadError(f"group {group!r}: input shape {shape} does not take [N, {self.dimension}] rows")
        outputs = {o.name for o in session.get_outputs()}
        required = bundle.PROBABILITIES_OUTPUT if self.is_classifier else bundle.SCORE_OUTPUT
        if required not in outputs:
            raise ModelLoadError(f"group {group!r}: graph has no output named {required!r}")
        return bundle.FEATURE_ERRORS_OUTPUT in outputs

    def _warm_up(self, group: GroupModel, batch_size: int) -> None:
        """Run the session once per batch shape so the first request pays no set-up cost, and
        prove the outputs have the promised shapes."""
        runs = [(group.session, 1), (group.session, batch_size), (group.bulk_session, batch_size)]
        for session, n in runs:
            rows = np.zeros((n, self.dimension), dtype=np.float32)
            try:
                outputs = session.run(None, {bundle.INPUT_NAME: rows})
            except Exception as exc:
                raise ModelLoadError(f"group {group.name!r}: warm-up failed: {exc}") from exc
            by_name = dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))
            if self.is_classifier:
                shape = np.shape(by_name[bundle.PROBABILITIES_OUTPUT])
                if shape != (n, len(self.class_labels)):
                    raise ModelLoadError(
                        f"group {group.name!r}: probabilities output has shape {shape}, "
                        f"expected [N, {len(self.class_labels)}] for classes {self.class_labels}"
                    )
                continue
            score = np.asarray(by_name[bundle.SCORE_OUTPUT])
            if score.reshape(-1).shape != (n,):
                raise ModelLoadError(f"group {group.name!r}: score output has shape {score.shape} for {n} rows")
            if group.has_feature_errors and np.shape(by_name[bundle.FEATURE_ERRORS_OUTPUT]) != (n, self.dimension):
                raise ModelLoadError(f"group {group.name!r}: feature_errors output is not [N, {self.dimension}]")

    def _classify(self, rows, groups, row_group, fallback, threshold_percentile, explain_top_k, bulk) -> Scores:
        if threshold_percentile is not None or explain_top_k:
            raise FailedPrecondition(
                f"model {self.name!r} is a classifier: threshold_percentile and explain_top_k do not apply"
            )
        probabilities = np.empty((rows.shape[0], len(self.class_labels)), dtype=np.float32)
        for position, group in enumerate(groups):
            session = group.bulk_session if bulk else group.session
            mask = row_group == position
            part = rows if len(groups) == 1 else np.ascontiguousarray(rows[mask])
            probabilities[mask] = session.run([bundle.PROBABILITIES_OUTPUT], {bundle.INPUT_NAME: part})[0]
        classes = np.argmax(probabilities, axis=1)
        empty = np.empty(0)
        names = [g.name for g in groups]
        return Scores(
            scores=empty,
            normalized=empty,
            is_anomaly=np.empty(0, dtype=bool),
            thresholds=empty,
            confidences=probabilities[np.arange(len(classes)), classes].astype(np.float64),
            groups=[names[i] for i in row_group.tolist()],
            fallback=fallback,
            classes=classes,
            probabilities=probabilities,
        )

    # -- leases ---------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        with self._lock:
            if self._retired:
                return False
            self._leases += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._leases -= 1
            done = self._retired and self._leases == 0
        if done:
            self._close()

    def retire(self) -> None:
        """No new leases; the sessions go once the running requests are done."""
        with self._lock:
            self._retired = True
            done = self._leases == 0
        if done:
            self._close()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def _close(self) -> None:
        for group in self.groups:
            group.session = group.bulk_session = None
        self._released.set()

    # -- scoring --------------------------------------------------------------------------

    def route(self, routing_values: Sequence[float], n: int) -> tuple[list[GroupModel], np.ndarray, np.ndarray]:
        """Pick the scoring group of every row.

        Returns (groups used, per-row index into that list, per-row fallback flag). A row whose
        group has no active model goes to "all" when that group is active.
        """
        no_fallback = np.zeros(n, dtype=bool)
        if self._single is not None:
            return [self._single], np.zeros(n, dtype=np.intp), no_fallback
        if len(routing_values) == 0:
            if self.all_group is None:
                raise InvalidArgument(
                    f"model {self.name!r} routes rows by {self.routing_key!r}: set routing_values "
                    "(one per row, or one for all rows)"
                )
            return [self.all_group], np.zeros(n, dtype=np.intp), no_fallback
        if len(routing_values) not in (1, n):
            raise InvalidArgument(f"routing_values has {len(routing_values)} values for {n} rows; give 1 or {n}")
        values = np.asarray(routing_values, dtype=np.float64)
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise InvalidArgument(f"routing_values[{row}] ({self.routing_key}) is {values[row]}")
        values = np.broadcast_to(values, (n,))
        chosen = np.full(n, -1, dtype=np.intp)
        for group in self._bounded:
            chosen[(chosen < 0) & group.contains(values)] = group.index
        fallback = np.zeros(n, dtype=bool)
        for index in np.unique(chosen):
            group = self.groups[index] if index >= 0 else None
            if group is not None and group.active:
                continue
            rows = chosen == index
            if self.all_group is None:
                row = int(np.flatnonzero(rows)[0])
                if group is None:
                    raise FailedPrecondition(
                        f"row {row}: {self.routing_key}={values[row]:g} is outside every group of model "
                        f"{self.name!r} and there is no active {bundle.ALL_GROUP!r} group"
                    )
                raise FailedPrecondition(
                    f"row {row}: group {group.name!r} of model {self.name!r} has no active model "
                    f"({group.status}) and there is no active {bundle.ALL_GROUP!r} group"
                )
            chosen[rows] = self.all_group.index
            fallback |= rows
        used = sorted(set(chosen.tolist()))
        position = np.empty(len(self.groups), dtype=np.intp)
        position[used] = np.arange(len(used))
        return [self.groups[i] for i in used], position[chosen], fallback

    def score(
        self,
        rows: np.ndarray,
        routing_values: Sequence[float] = (),
        *,
        threshold_percentile: float | None = None,
        explain_top_k: int = 0,
        bulk: bool = False,
    ) -> Scores:
        """Score validated rows [N, D] (float32, finite); `bulk` picks the multi-threaded sessions."""
        n = rows.shape[0]
        groups, row_group, fallback = self.route(routing_values, n)
        if self.is_classifier:
            return self._classify(rows, groups, row_group, fallback, threshold_percentile, explain_top_k, bulk)
        if explain_top_k and not all(g.has_feature_errors for g in groups):
            raise FailedPrecondition(
                f"model {self.name!r} ({self.kind}) does not report per-feature errors; set explain_top_k to 0"
            )
        outputs = [bundle.SCORE_OUTPUT, bundle.FEATURE_ERRORS_OUTPUT] if explain_top_k else [bundle.SCORE_OUTPUT]
        if len(groups) == 1:
            session = groups[0].bulk_session if bulk else groups[0].session
            results = session.run(outputs, {bundle.INPUT_NAME: rows})
            raw = results[0].reshape(-1).astype(np.float64)
            errors = results[1] if explain_top_k else None
        else:
            raw = np.empty(n, dtype=np.float64)
            errors = np.empty(rows.shape, dtype=np.float32) if explain_top_k else None
            for position, group in enumerate(groups):
                mask = row_group == position
                session = group.bulk_session if bulk else group.session
                results = session.run(outputs, {bundle.INPUT_NAME: np.ascontiguousarray(rows[mask])})
                raw[mask] = results[0].reshape(-1)
                if errors is not None:
                    errors[mask] = results[1]
        if len(groups) == 1:
            group = groups[0]
            threshold, normalized_threshold = group.decision(threshold_percentile)
            normalized = scoring.normalize(raw, group.probabilities, group.quantile_values)
            thresholds = np.full(n, threshold)
            is_anomaly = raw > threshold
            group_names = [group.name] * n
        else:
            normalized = np.empty(n, dtype=np.float64)
            thresholds = np.empty(n, dtype=np.float64)
            normalized_threshold = np.empty(n, dtype=np.float64)
            for position, group in enumerate(groups):
                mask = row_group == position
                normalized[mask] = scoring.normalize(raw[mask], group.probabilities, group.quantile_values)
                thresholds[mask], normalized_threshold[mask] = group.decision(threshold_percentile)
            is_anomaly = raw > thresholds
            names = [g.name for g in groups]
            group_names = [names[i] for i in row_group.tolist()]
        return Scores(
            scores=raw,
            normalized=normalized,
            is_anomaly=is_anomaly,
            thresholds=thresholds,
            confidences=scoring.confidence(normalized, normalized_threshold, is_anomaly),
            groups=group_names,
            fallback=fallback,
            explanations=scoring.top_contributions(errors, explain_top_k) if errors is not None else None,
        )
