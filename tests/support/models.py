"""Small real models for tests and benchmarks, built without torch.

A linear autoencoder fitted by PCA on generated normal rows, exported as an ONNX graph that
follows the bundle contract (raw features in; standardization inside; `score` and
`feature_errors` out), with its threshold and quantile table taken from held-out normal
rows exactly as the contract asks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from oddity.common import bundle
from oddity.trainer import bundle_writer
from oddity.v1 import embedder_pb2, manifest_pb2

OPSET = 17
IR_VERSION = 8  # onnxruntime 1.31 reads IR <= 13; onnx 1.23 would write 14 by default
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 1001)


def autoencoder_graph(
    mean: np.ndarray, scale: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]], activation: str | None = "Relu"
) -> bytes:
    """ONNX bytes: z = (x - mean) / scale; dense layers (activation between); errors in z space."""
    d = mean.shape[0]
    inits = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array(scale.astype(np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Sub", ["input", "mean"], ["centered"]),
        helper.make_node("Div", ["centered", "scale"], ["z"]),
    ]
    current = "z"
    for i, (weight, bias) in enumerate(layers):
        inits += [
            numpy_helper.from_array(weight.astype(np.float32), f"w{i}"),
            numpy_helper.from_array(bias.astype(np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"h{i}"]))
        current = f"h{i}"
        if activation and i < len(layers) - 1:
            nodes.append(helper.make_node(activation, [current], [f"a{i}"]))
            current = f"a{i}"
    nodes += [
        helper.make_node("Sub", [current, "z"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["feature_errors"]),
        helper.make_node("ReduceMean", ["feature_errors"], ["score"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "autoencoder",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", d])],
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("feature_errors", TensorProto.FLOAT, ["N", d]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def random_autoencoder(d: int, hidden: tuple[int, ...] = (256, 64, 256), seed: int = 0) -> bytes:
    """An untrained autoencoder of a given shape (for timing)."""
    rng = np.random.default_rng(seed)
    sizes = [d, *hidden, d]
    layers = [(rng.normal(0, 1 / np.sqrt(a), (a, b)), np.zeros(b)) for a, b in pairwise(sizes)]
    return autoencoder_graph(np.zeros(d), np.ones(d), layers)


@dataclass
class FittedGroup:
    onnx: bytes
    threshold: float
    quantiles: np.ndarray  # values at QUANTILE_LEVELS
    heldout_scores: np.ndarray
    train_samples: int
    validation_samples: int


def timing_group(onnx: bytes) -> FittedGroup:
    """An untrained graph with a made-up score distribution (threshold 1.0): for timing and
    swap tests, where what the scores mean does not matter."""
    return FittedGroup(
        onnx=onnx,
        threshold=1.0,
        quantiles=np.linspace(0.5, 1.5, len(QUANTILE_LEVELS)),
        heldout_scores=np.zeros(1),
        train_samples=1,
        validation_samples=1,
    )


def score_with_onnx(model: bytes, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(["score"], {"input": rows.astype(np.float32)})[0]


def fit_pca_group(rows: np.ndarray, *, components: int, percentile: float = 95.0, seed: int = 0) -> FittedGroup:
    """Fit a linear autoencoder on 80% of rows; take threshold and quantiles on the held-out 20%."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    cut = int(len(rows) * 0.8)
    train, heldout = rows[order[:cut]], rows[order[cut:]]
    mean, scale = train.mean(axis=0), train.std(axis=0) + 1e-6
    z = (train - mean) / scale
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    v = vt[:components]
    model = autoencoder_graph(mean, scale, [(v.T, np.zeros(components)), (v, np.zeros(len(mean)))], activation=None)
    heldout_scores = score_with_onnx(model, heldout).astype(np.float64)
    return FittedGroup(
        onnx=model,
        threshold=float(np.percentile(heldout_scores, percentile)),
        quantiles=np.quantile(heldout_scores, QUANTILE_LEVELS),
        heldout_scores=heldout_scores,
        train_samples=len(train),
        validation_samples=len(heldout),
    )


def normal_rows(n: int, d: int, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    """Correlated Gaussian rows living near a low-dimensional subspace."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(1234 + d).normal(size=(max(2, d // 3), d))
    latent = rng.normal(size=(n, mixing.shape[0]))
    return (latent @ mixing + 0.1 * rng.normal(size=(n, d)) + shift).astype(np.float32)


def group_proto(
    name: str,
    fitted: FittedGroup | None,
    *,
    lower: float | None = None,
    upper: float | None = None,
    upper_inclusive: bool = False,
    percentile: float = 95.0,
    status: int = manifest_pb2.GROUP_STATUS_ACTIVE,
) -> manifest_pb2.ModelGroup:
    group = manifest_pb2.ModelGroup(name=name, status=status)
    if lower is not None or upper is not None:
        if lower is not None:
            group.bounds.lower = lower
        if upper is not None:
            group.bounds.upper = upper
        group.bounds.upper_inclusive = upper_inclusive
    if fitted is not None:
        group.onnx_file = f"{name}.onnx"
        group.threshold = fitted.threshold
        group.threshold_percentile = percentile
        group.quantiles.probabilities.extend(QUANTILE_LEVELS.tolist())
        group.quantiles.values.extend(fitted.quantiles.tolist())
        group.train_samples = fitted.train_samples
        group.validation_samples = fitted.validation_samples
    return group


def publish(
    repository: Path,
    name: str,
    groups: Mapping[str, tuple[manifest_pb2.ModelGroup, bytes | None]],
    *,
    dimension: int,
    routing_key: str = "",
    feature_names: list[str] | None = None,
    kind: str = "autoencoder",
) -> int:
    """Publish one version through the bundle contract; returns its number."""
    manifest = manifest_pb2.ModelManifest(
        name=name,
        kind=kind,
        task=manifest_pb2.MODEL_TASK_ANOMALY_DETECTION,
        input_dimension=dimension,
        feature_names=feature_names or [],
        routing_key=routing_key,
        dataset=name,
    )
    manifest.created_at.GetCurrentTime()
    files = {}
    for group, data in groups.values():
        manifest.groups.append(group)
        if data is not None:
            files[group.onnx_file] = data
    return bundle_writer.publish_version(repository, manifest, files)


def publish_simple(repository: Path, name: str, fitted: FittedGroup, *, dimension: int, feature_names=None) -> int:
    """One `all` group, no routing."""
    return publish(
        repository,
        name,
        {"all": (group_proto("all", fitted), fitted.onnx)},
        dimension=dimension,
        feature_names=feature_names,
    )


def publish_image_model(repository: Path, served: embedder_pb2.ModelInfo) -> None:
    """Model `pictures`: a model over the vectors of the embedder's `vit` plus the child's age."""
    d = served.dimension + 1
    fit = fit_pca_group(normal_rows(400, d), components=2)
    publish_simple(repository, "pictures", fit, dimension=d)
    version = repository / "pictures" / "1"
    manifest = bundle.read_manifest(version)
    source = manifest.embedding
    source.model, source.model_id, source.revision = "vit", served.model_id, served.revision
    source.dimension, source.modality = served.dimension, "image"
    source.extra_features.append("age")
    (version / bundle.MANIFEST_FILE).write_text(bundle.manifest_to_json(manifest))
