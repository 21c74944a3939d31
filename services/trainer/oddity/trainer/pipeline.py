"""One training run for one dataset: load -> split per group -> fit -> export ONNX ->
validate -> manifest. Publishing is the caller's step, so a run that fails anywhere leaves
the model repository untouched. Classifiers are fitted on a stratified training split and
judged on the held-out rest (classifier_evaluation.py); kinds that train in epochs keep
checkpoints in the job's checkpoint folder, so a resumed job goes on from the last one.

Reason to change: the steps of a training run and what its manifest records.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
from sklearn.model_selection import train_test_split

from oddity.common import bundle
from oddity.common.bundle.contract import PREDICTED_SCORE_OUTPUT
from oddity.trainer import calibration, classifier_evaluation, job_control, validation
from oddity.trainer.checkpoints import JobCheckpoints
from oddity.trainer.data import Dataset, routing_groups
from oddity.trainer.learners import Learner, learner_class, make_anomaly_learner, make_classifier
from oddity.trainer.learners import Progress as LearnerProgress
from oddity.trainer.spec import DatasetSpec
from oddity.v1 import manifest_pb2

ABSOLUTE_MIN_ROWS = 20  # below this even a forced run cannot be calibrated
PARITY_ROWS = 2000  # ONNX Runtime vs the framework on a sample of the rows
# Rows the live version scores between two checks of the job's limits (a kNN graph's scoring
# of a group's rows takes a while; validation.onnx_scores bounds the memory of each call).
LIVE_SCORING_ROWS = 4096

# progress(phase, fields): phase is loading, training, calibrating, exporting, validating (then the runner's
# indexing and publishing);
# in training, fields may hold epoch, total_epochs, progress_unit (what they count), loss, train_loss,
# validation_loss and epoch_metrics.
Progress = Callable[[str, dict[str, Any]], None]


class Skipped(Exception):
    """Nothing was trained, on purpose (too few rows); the message says why."""


@dataclass
class GroupPlan:
    name: str
    mask: np.ndarray
    lower: float | None = None
    upper: float | None = None
    upper_inclusive: bool = False


@dataclass
class TrainedModel:
    """A validated model version, ready to publish."""

    manifest: manifest_pb2.ModelManifest
    onnx_files: dict[str, bytes]
    metrics: dict[str, float] = field(default_factory=dict)
    group_samples: dict[str, int] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    # Kinds that train in epochs: per group, each epoch's figures (the history log keeps them).
    epochs: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    # Per group: the checkpoint epoch a resumed job went on from (groups that resumed only).
    resumed_from_epoch: dict[str, int] = field(default_factory=dict)


def plan_groups(spec: DatasetSpec, data: Dataset) -> list[GroupPlan]:
    """Each group's rows: its routing range's share of the sample, and `all`'s own sample."""
    if spec.routing is None:
        return [GroupPlan(bundle.ALL_GROUP, data.in_all_sample())]
    key, bounds, values = spec.routing.key, spec.routing.bounds, data.routing
    if values is None:
        raise ValueError(f"the rows carry no values of the routing key {key!r}")
    group_of, sampled = routing_groups(values, bounds), data.in_group_sample()
    plans = []
    for i, (low, high) in enumerate(itertools.pairwise(bounds)):
        last = i == len(bounds) - 2
        plans.append(GroupPlan(f"{key}_{low:g}_{high:g}", (group_of == i) & sampled, low, high, last))
    if spec.routing.all_group:
        plans.append(GroupPlan(bundle.ALL_GROUP, data.in_all_sample()))
    return plans


def train(
    spec: DatasetSpec,
    data: Dataset,
    *,
    fingerprint: str,
    force: bool = False,
    kind: str | None = None,
    live: bundle.VerifiedVersion | None = None,
    progress: Progress | None = None,
    embedding: manifest_pb2.EmbeddingSource | None = None,
    checkpoints: JobCheckpoints | None = None,
) -> TrainedModel:
    """Train, export and validate every group; raises Skipped (every group below min_samples;
    a run with too few rows in all is the job's skip rule, skip_rules.py), ValidationFailed or
    ValueError. `checkpoints`: where kinds that train in epochs keep (and resume from) their checkpoints."""
    report = progress or (lambda phase, fields: None)
    kind = kind or spec.model.kind
    learner_type = learner_class(kind)
    manifest = manifest_pb2.ModelManifest(
        name=spec.name,
        kind=kind,
        task=manifest_pb2.ModelTask.ValueType(learner_type.task),
        feature_names=data.feature_names,
        input_dimension=len(data.feature_names),
        routing_key=spec.routing.key if spec.routing else "",
        data_fingerprint=fingerprint,
        dataset=spec.name,
        score_column=(spec.score_column or "") if learner_type.score_head else "",
    )
    if embedding is not None:
        manifest.embedding.CopyFrom(embedding)
    trained = TrainedModel(manifest=manifest, onnx_files={})
    rng = np.random.default_rng(int(spec.model.params.get("seed", 0)))
    live_groups = {g.name: g for g in live.manifest.groups} if live is not None else {}
    for plan in plan_groups(spec, data):
        count = int(plan.mask.sum())
        trained.group_samples[plan.name] = count
        group = manifest.groups.add(name=plan.name, train_samples=count)
        if plan.lower is not None:
            group.bounds.lower, group.bounds.upper = plan.lower, plan.upper
            group.bounds.upper_inclusive = plan.upper_inclusive
        if count < ABSOLUTE_MIN_ROWS or (count < spec.min_samples and not force):
            group.status = manifest_pb2.GROUP_STATUS_INSUFFICIENT_DATA
            group.status_message = f"{count} rows < min_samples {spec.min_samples}"
            continue
        head = learner_type.score_head and data.targets is not None
        context = GroupContext(
            spec=spec,
            kind=kind,
            plan=plan,
            group=group,
            rows=data.features[plan.mask],
            labels=data.labels[plan.mask] if data.labels is not None else None,
            targets=data.targets[plan.mask] if head and data.targets is not None else None,
            rng=rng,
            trained=trained,
            live=live,
            live_group=live_groups.get(plan.name),
            report=report,
            checkpoints=checkpoints,
        )
        _train_group(context, learner_type)
    if not bundle.active_groups(manifest):
        raise Skipped(
            "every group is below min_samples: " + ", ".join(f"{g.name}={g.train_samples}" for g in manifest.groups)
        )
    manifest.training_metrics.update(trained.metrics)
    manifest.created_at.GetCurrentTime()
    return trained


@dataclass(frozen=True)
class GroupContext:
    """What training one group works with: the run's spec, kind and shared state, the group's
    plan, rows and manifest entry, and the live version's entry of the same group."""

    spec: DatasetSpec
    kind: str
    plan: GroupPlan
    group: manifest_pb2.ModelGroup
    rows: np.ndarray
    labels: np.ndarray | None
    targets: np.ndarray | None  # the score column's values, for kinds with a regression head
    rng: np.random.Generator
    trained: TrainedModel
    live: bundle.VerifiedVersion | None
    live_group: manifest_pb2.ModelGroup | None
    report: Progress
    checkpoints: JobCheckpoints | None

    @property
    def prefix(self) -> str:
        """How the run's metrics name this group's figures."""
        return f"{self.plan.name}." if self.plan.name != bundle.ALL_GROUP else ""

    @property
    def live_is_comparable(self) -> bool:
        """The live version serves this group from the same inputs: its figures can be compared."""
        return (
            self.live is not None
            and self.live_group is not None
            and self.live_group.status == manifest_pb2.GROUP_STATUS_ACTIVE
            and _same_inputs(self.live, self.trained.manifest)
        )

    def timed(self, step: str, started: float) -> None:
        durations = self.trained.durations
        durations[step] = durations.get(step, 0.0) + time.perf_counter() - started

    def epoch_reporter(self) -> LearnerProgress:
        """A learner's per-epoch progress as the job's training progress."""
        name, report, unit = self.plan.name, self.report, learner_class(self.kind).progress_unit

        def told(epoch: int, total: int, loss: float, figures: Mapping[str, float] | None = None, /) -> None:
            fields: dict[str, Any] = {
                "group": name,
                "epoch": epoch,
                "total_epochs": total,
                "progress_unit": unit,
                "loss": loss,
            }
            if figures:
                rest = dict(figures)
                fields["train_loss"] = rest.pop("train_loss", 0.0)
                fields["validation_loss"] = rest.pop("validation_loss", 0.0)
                fields["epoch_metrics"] = rest
            report("training", fields)

        return told

    def resume_reporter(self) -> Callable[[int], None]:
        """Told when a group's training goes on from a checkpoint (a resumed job)."""
        name, report = self.plan.name, self.report
        return lambda epoch: report("training", {"group": name, "resumed_from_epoch": epoch, "epoch": epoch})


def _train_group(context: GroupContext, learner_type: type[Learner]) -> None:
    if learner_type.is_classifier_kind():
        onnx_model, parity = _train_classifier(context)
    else:
        onnx_model, parity = _train_detector(context)
    group, trained = context.group, context.trained
    group.metrics["parity_max_abs_diff"] = parity
    trained.metrics[f"{context.prefix}parity_max_abs_diff"] = parity
    group.status = manifest_pb2.GROUP_STATUS_ACTIVE
    group.onnx_file = f"{context.plan.name}.onnx"
    trained.onnx_files[group.onnx_file] = onnx_model


def _export(learner: Learner, context: GroupContext) -> tuple[bytes, ort.InferenceSession]:
    start = time.perf_counter()
    context.report("exporting", {"group": context.plan.name})
    onnx_model = learner.to_onnx()
    session = validation.onnx_session(onnx_model)
    context.timed("export", start)
    return onnx_model, session


def _train_detector(context: GroupContext) -> tuple[bytes, float]:
    """Fit on every row, with out-of-fold scores of every row; calibrate on those (calibration.py)."""
    spec, plan, group, rows, report = context.spec, context.plan, context.group, context.rows, context.report
    gate = spec.validation
    seed = int(spec.model.params.get("seed", 0))
    start = time.perf_counter()
    report("training", {"group": plan.name})
    learner = make_anomaly_learner(context.kind, spec.model.params)
    folds = calibration.make_folds(len(rows), seed)
    # The fold models' training is training too: kinds that can train them alongside the
    # served model do (the autoencoder), so "train" holds every fit and "calibrate" the rest.
    oof = learner.fit_cross_fitted(rows, folds, context.epoch_reporter())
    context.timed("train", start)

    start = time.perf_counter()
    report("calibrating", {"group": plan.name})
    try:
        calibrated = calibration.calibrate(oof, folds, spec.threshold_percentile)
    except ValueError as exc:
        raise validation.ValidationFailed(f"group {plan.name!r}: {exc}") from exc
    context.timed("calibrate", start)

    onnx_model, session = _export(learner, context)

    start = time.perf_counter()
    report("validating", {"group": plan.name})
    sample = rows[np.random.default_rng(seed).permutation(len(rows))[:PARITY_ROWS]]
    parity = validation.check_parity(
        validation.onnx_scores(session, sample),
        learner.anomaly_scores(sample)[0],
        gate.parity_tolerance,
        learner.parity_allowance(sample),
    )
    validation.check_anomaly_rate(
        calibrated.cross_validated_rate,
        calibrated.rows,
        gate.anomaly_rate,
        plan.name,
        spec.threshold_percentile,
        calibrated.cross_validated_rate_with_ties,
    )
    expected = 1 - spec.threshold_percentile / 100
    if context.live is not None and context.live_group is not None and context.live_is_comparable:
        # The live version saw most of these rows, so its rate here leans low: the check only
        # stops a new model that flags far more than the live one did.
        live_scores = _scores_in_chunks(validation.onnx_session(context.live.onnx[plan.name]), rows)
        live_rate = float(np.mean(live_scores > context.live_group.threshold))
        validation.check_regression(
            abs(calibrated.cross_validated_rate - expected),
            abs(live_rate - expected),
            gate.regression_tolerance,
            f"group {plan.name!r}: distance from the expected anomaly rate",
            False,
        )
    group.threshold = calibrated.threshold
    group.threshold_percentile = spec.threshold_percentile
    group.quantiles.probabilities.extend(bundle.QUANTILE_LEVELS.tolist())
    group.quantiles.values.extend(calibrated.quantiles.tolist())
    group.calibration.CopyFrom(
        manifest_pb2.Calibration(
            method=learner.calibration_method,
            folds=calibrated.folds,
            rows=calibrated.rows,
            expected_anomaly_rate=expected,
            cross_validated_anomaly_rate=calibrated.cross_validated_rate,
        )
    )
    evidence = learner.evidence()
    total = sum(m.weight for m in evidence) or 1.0
    for member in evidence:
        group.members.add(
            kind=member.kind,
            params_json=json.dumps(member.params, sort_keys=True),
            weight=member.weight / total,
            note=member.note,
        )
    group.selection = learner.selection()
    group.metrics.update(learner.training_figures())
    group.metrics["cross_validated_anomaly_rate"] = calibrated.cross_validated_rate
    context.trained.metrics[f"{context.prefix}cross_validated_anomaly_rate"] = calibrated.cross_validated_rate
    group.train_samples = len(rows)
    group.validation_samples = calibrated.rows
    context.timed("validate", start)
    return onnx_model, parity


def _train_classifier(context: GroupContext) -> tuple[bytes, float]:
    """Fit on a stratified training split; judge on the held-out rows (never used for fitting,
    early stopping or the temperature); the gate compares balanced accuracy with the live
    version's on the same rows."""
    spec, plan, group, rows, report = context.spec, context.plan, context.group, context.rows, context.report
    trained, targets = context.trained, context.targets
    if context.labels is None:
        raise ValueError(f"{context.kind} is a classifier and the rows carry no labels")
    labels = context.labels
    gate = spec.validation
    train_idx, holdout = holdout_split(labels, gate.holdout_fraction, context.rng)
    start = time.perf_counter()
    report("training", {"group": plan.name})
    learner = make_classifier(context.kind, spec.model.params)
    checkpoints = context.checkpoints
    learner.fit(
        rows[train_idx],
        labels[train_idx],
        progress=context.epoch_reporter(),
        targets=targets[train_idx] if targets is not None else None,
        checkpoints=checkpoints.group(plan.name, context.resume_reporter()) if checkpoints else None,
    )
    context.timed("train", start)

    onnx_model, session = _export(learner, context)

    start = time.perf_counter()
    report("validating", {"group": plan.name})
    classes = learner.classes_
    held_rows = rows[holdout]
    probabilities = validation.onnx_probabilities(session, held_rows)
    parity = validation.check_parity(probabilities, learner.predict_proba(held_rows), gate.parity_tolerance)
    predicted_scores = None
    reference = learner.predict_scores(held_rows)  # the regression head's, if it has one
    if reference is not None:
        predicted_scores = session.run([PREDICTED_SCORE_OUTPUT], {bundle.INPUT_NAME: held_rows.astype(np.float32)})[
            0
        ].astype(np.float64)
        parity = max(parity, validation.check_parity(predicted_scores, reference, gate.parity_tolerance))
    evaluation = classifier_evaluation.evaluate(
        classes,
        labels[holdout],
        probabilities,
        uncalibrated=learner.uncalibrated_proba(held_rows),
        temperature=learner.temperature,
        predicted_scores=predicted_scores,
        targets=targets[holdout] if targets is not None else None,
    )
    trained.manifest.class_labels[:] = [str(c) for c in classes]
    live = context.live
    if (
        live is not None
        and context.live_is_comparable
        and list(live.manifest.class_labels) == list(trained.manifest.class_labels)
    ):
        live_session = validation.onnx_session(live.onnx[plan.name])
        live_balanced = classifier_evaluation.balanced_accuracy(
            classes, validation.onnx_probabilities(live_session, held_rows), labels[holdout]
        )
        validation.check_balanced_accuracy(
            evaluation.balanced_accuracy, live_balanced, gate.regression_tolerance, plan.name, len(holdout)
        )
        group.metrics["live_balanced_accuracy"] = live_balanced
    figures = evaluation.figures()
    figures.update(learner.training_figures())
    history = learner.epoch_history()
    if history is not None:
        trained.epochs[plan.name] = history
    if learner.resumed_from_epoch:
        trained.resumed_from_epoch[plan.name] = learner.resumed_from_epoch
    group.metrics.update(figures)
    group.evaluation.CopyFrom(evaluation.to_proto())
    trained.metrics.update({f"{context.prefix}{k}": v for k, v in figures.items()})
    group.train_samples = len(train_idx)
    group.validation_samples = len(holdout)
    context.timed("validate", start)
    return onnx_model, parity


def _scores_in_chunks(session: ort.InferenceSession, rows: np.ndarray) -> np.ndarray:
    parts = []
    for start in range(0, len(rows), LIVE_SCORING_ROWS):
        job_control.check()
        parts.append(validation.onnx_scores(session, rows[start : start + LIVE_SCORING_ROWS]))
    return np.concatenate(parts) if parts else np.empty(0)


def holdout_split(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows): `fraction` of the rows (at least 4) held out, stratified
    by class when every class has two rows or more, so a rare class is judged too."""
    n = len(labels)
    n_holdout = max(4, int(n * fraction))
    order = rng.permutation(n)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() >= 2 and len(classes) <= min(n_holdout, n - n_holdout):
        seed = int(rng.integers(2**31))
        train_idx, holdout = train_test_split(order, test_size=n_holdout, stratify=labels[order], random_state=seed)
        return np.sort(train_idx), np.sort(holdout)
    return order[n_holdout:], order[:n_holdout]


def _same_inputs(live: bundle.VerifiedVersion | None, manifest: manifest_pb2.ModelManifest) -> bool:
    return live is not None and list(live.manifest.feature_names) == list(manifest.feature_names)
