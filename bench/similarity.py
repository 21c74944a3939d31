"""Similarity: the index choice (exact or HNSW) on real embeddings, and a generated image
library through the real services (Similar, Clusters, SuggestTags).

    python -m bench.similarity [--part index|library|all] [--sets CIFAR,20news] [--rounds 3]
                               [--sizes 2000,10000,50000] [--per-subject 80] [--held-out 20]

(a) Index choice, on the embedding sets of the anomaly-benchmarks folder (`embeddings/*.npz`:
ResNet-18 image features, BERT text features; `y`, 0 or 1, is treated as a second subject
and kept as a metadata column). Each set is indexed by the trainer's builder
(`oddity.trainer.index_builder.build_index`, HNSW forced with approximate_from=0) and searched
through the detector's served index (`oddity.detector.item_index.ItemIndex`), once with the
HNSW file and once without it (exact: one matrix-vector product). Every item is a query
(like `Similar` by item id with exclude_self); the top 10 are compared:
  - recall@10 of HNSW against exact search;
  - the same with a filter on y (y = 0 keeps ~95% of the items: HNSW restricted to them;
    y = 1 keeps ~5%: the served index searches those exactly, so its recall is 1 by design;
    the share of searches HNSW answered is printed);
  - precision@10 of same-y neighbours for both (the share of the 10 with the query's y; per
    y value, as y = 0 dominates the mean);
  - queries/s of both side by side: one query per call through the served index, and batches
    of 64 on the same index files (FAISS's search of 64 rows; exact: one matrix product and a
    top-k), medians of `--rounds` rounds alternating exact and HNSW, on a sample of 1,000
    queries; and the build time (the whole build_index, HDBSCAN included, and the HNSW alone);
  - FAISS's HNSW called directly one query at a time, and usearch's HNSW with the same
    parameters (connectivity 16, expansion 128/64, one thread) when it is installed
    (`pip install usearch`, in the root pyproject's bench group): recall@10, build, queries/s.
  `--sizes`: the same comparison (FAISS and numpy directly, as the served index runs them) on
  CIFAR's vectors grown by jittered copies, to see where HNSW pays off.

(b) The library: `oddity.cli.demo_library` draws a face on white, a house on grass and a car
under a sky (`--per-subject` each, tags such as "face, smile, glasses, red"). A real embedder
(the demo's small random-weight ViT, `oddity.cli.demo_encoder.small_vit`), trainer and detector
run as child processes; the library is dropped as an image dataset with a `similarity:`
section (id_column: id, tags_column: tags) and trained with Train. Then:
  - precision@5: `Similar` by item id with exclude_self; the share of the 5 of the same subject;
  - ARI: scikit-learn's adjusted_rand_score of each item's cluster (as `Similar` reports it)
    against its subject; an unclustered item counts as a cluster of its own (a singleton); the
    ARI over the clustered items only is printed beside it;
  - tag recall@3 on held-out images (`--held-out` per subject, another seed), queried by image:
    the share of the true tags among the top 3 suggestions, out of min(3, true tags) (what a
    list of 3 can hold at best); "all": every true tag; "details": the tags beyond the subject,
    with the subject given as a tag the item has (so it is not suggested); and per tag, the
    share of the held-out images carrying it whose top 3 lacks it;
  - held-out images assigned by `Clusters` to their subject's cluster (the cluster holding most
    of the subject's library items), and novel images (a fourth subject, a boat on water)
    marked new.

Figures print as they come; JSON in bench/results/similarity.json (--output).

Reason to change: what the similarity benchmark measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import grpc
import numpy as np
import yaml
from sklearn.metrics import adjusted_rand_score

from bench.machine import describe
from bench.quality import MAX_MESSAGE, start_service, stop_service
from oddity.cli import demo_library
from oddity.cli.demo_encoder import small_vit
from oddity.cli.demo_library import LibraryItem
from oddity.common.bundle import index_contract as contract
from oddity.detector.item_attributes import MetadataFilter
from oddity.detector.item_index import ItemIndex
from oddity.detector.main import configure_process
from oddity.trainer.index_builder import IndexItems, IndexSettings, build_index
from oddity.v1 import detector_pb2, detector_pb2_grpc, manifest_pb2, trainer_pb2, trainer_pb2_grpc

# The development sets sit beside the repository: ../shared/data/anomaly-benchmarks.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "anomaly-benchmarks"
DEFAULT_OUTPUT = Path("bench/results/similarity.json")
K = 10
BATCH = 64
TIMED_QUERIES = 1000
SUBJECT_COLUMN = "y"
HNSW = IndexSettings()  # the builder's HNSW parameters: m, efConstruction, efSearch
LIBRARY_MODEL = "library"
EMBEDDER_MODEL = "vit"
PRECISION_K = 5
TAGS_K = 3
ASSIGN_BATCH = 32


# -- (a) index choice -----------------------------------------------------------------------


@dataclass
class IndexChoice:
    set: str
    items: int
    dimension: int
    build_seconds: float  # build_index: vectors, HNSW, HDBSCAN clusters, catalog
    clusters: int  # found by build_index's HDBSCAN
    hnsw_seconds: float  # constructing the HNSW alone, same parameters
    recall_at_10: float
    filtered_recall_at_10: dict[str, float]  # by the y value the filter keeps
    filtered_approximate_share: dict[str, float]  # share of those searches HNSW answered
    same_y_precision_at_10: dict[str, dict[str, float]]  # exact|approximate -> all, y=0, y=1
    single_qps: dict[str, float]  # exact|approximate, one query per call (served index)
    batch_qps: dict[str, float]  # exact|approximate, batches of 64 (index files)
    direct_single_qps: dict[str, float]  # FAISS HNSW (and usearch), one query per call, called directly
    usearch: dict[str, float] | None = None  # build_seconds, recall_at_10, batch_qps (when installed)


@dataclass
class SizePoint:
    items: int
    hnsw_seconds: float
    recall_at_10: float
    single_qps: dict[str, float]
    batch_qps: dict[str, float]


def load_sets(root: Path, only: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    wanted = [s.lower() for s in only.split(",") if s]
    sets = {}
    for path in sorted((root / "embeddings").glob("*.npz")):
        if wanted and not any(w in path.stem.lower() for w in wanted):
            continue
        with np.load(path, allow_pickle=False) as data:
            sets[path.stem] = (data["X"].astype(np.float32), data["y"].astype(np.int64))
    if not sets:
        raise SystemExit(f"no embedding sets under {root / 'embeddings'} (--data names the anomaly-benchmarks folder)")
    return sets


def served_pair(
    x: np.ndarray, y: np.ndarray
) -> tuple[ItemIndex, ItemIndex, manifest_pb2.SimilarityIndex, dict[str, bytes], float]:
    """The detector's served index of the set with its HNSW file and without it (exact), from
    one build; the build's index and files, and its seconds."""
    started = time.perf_counter()
    built = build_index(
        IndexItems(ids=[f"row-{i}" for i in range(len(x))], vectors=x, metadata={SUBJECT_COLUMN: y.tolist()}),
        space=contract.EMBEDDING_SPACE,
        settings=IndexSettings(approximate_from=0),
    )
    seconds = time.perf_counter() - started
    approximate = ItemIndex.load(built.index, built.files)
    exact_index = manifest_pb2.SimilarityIndex()
    exact_index.CopyFrom(built.index)
    exact_index.ClearField("approximate")
    exact_index.ClearField("hnsw")
    exact = ItemIndex.load(exact_index, built.files)
    return exact, approximate, built.index, built.files, seconds


def neighbours(index: ItemIndex, queries: Sequence[int], mask: np.ndarray | None = None) -> list[np.ndarray]:
    """Top K of each query item, itself left out (Similar by item id with exclude_self)."""
    return [index.search(index.vector(q), K, mask=mask, exclude=q).positions for q in queries]


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / max(len(t), 1) for f, t in zip(found, truth, strict=True)]))


def same_subject(found: list[np.ndarray], queries: Sequence[int], subjects: np.ndarray) -> dict[str, float]:
    """Share of each query's neighbours with its subject: over every query, and per subject."""
    shares = np.asarray([np.mean(subjects[f] == subjects[q]) for f, q in zip(found, queries, strict=True)])
    mine = subjects[np.asarray(queries)]
    out = {"all": float(shares.mean())}
    for value in np.unique(subjects):
        out[f"{SUBJECT_COLUMN}={value}"] = float(shares[mine == value].mean())
    return out


def timed(rounds: int, runs: dict[str, Callable[[], int]]) -> dict[str, float]:
    """Queries/s of each run (it returns how many queries it made): the median of `rounds`
    rounds, the runs alternating within each round so load that changes between rounds hits
    each alike."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            count = run()
            rates[name].append(count / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def hnsw_params(ef_search: int) -> Any:
    params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # (missing from faiss's stubs)
    params.efSearch = ef_search
    return params


def hnsw_from(files: dict[str, bytes]) -> faiss.Index:
    return faiss.deserialize_index(np.frombuffer(files[contract.APPROXIMATE_FILE], dtype=np.uint8))


def exact_batch(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Top k of each query row by one matrix product (the served index's exact search, batched)."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def batch_runs(vectors: np.ndarray, hnsw: faiss.Index, queries: np.ndarray) -> dict[str, Callable[[], int]]:
    """Batches of BATCH query rows: exact (numpy) and HNSW (FAISS, the served breadth)."""
    params = hnsw_params(max(HNSW.ef_search, 4 * K))
    batches = [queries[i : i + BATCH] for i in range(0, len(queries), BATCH)]

    def exact() -> int:
        for batch in batches:
            exact_batch(vectors, batch, K + 1)
        return len(queries)

    def approximate() -> int:
        for batch in batches:
            hnsw.search(batch, K + 1, params=params)
        return len(queries)

    return {"exact": exact, "approximate": approximate}


def usearch_index(vectors: np.ndarray) -> Any | None:
    """usearch's HNSW over the vectors with the builder's parameters, one thread; None when
    usearch is not installed (`pip install usearch`, the bench dependency group)."""
    try:
        from usearch.index import Index
    except ImportError:
        return None
    index = Index(
        ndim=vectors.shape[1],
        metric="ip",
        dtype="f32",
        connectivity=HNSW.hnsw_m,
        expansion_add=HNSW.ef_construction,
        expansion_search=max(HNSW.ef_search, 4 * K),
    )
    index.add(np.arange(len(vectors)), vectors, threads=1)
    return index


def direct_single(
    vectors: np.ndarray, hnsw: faiss.Index, queries: np.ndarray, other: Any | None
) -> dict[str, Callable[[], int]]:
    """One query per call, straight to FAISS (and usearch): the libraries without the served
    index's per-call Python."""
    params = hnsw_params(max(HNSW.ef_search, 4 * K))

    def faiss_hnsw() -> int:
        for query in queries:
            hnsw.search(query.reshape(1, -1), K + 1, params=params)
        return len(queries)

    runs = {"faiss": faiss_hnsw}
    if other is not None:

        def usearch_hnsw() -> int:
            for query in queries:
                other.search(query, K + 1, threads=1)
            return len(queries)

        runs["usearch"] = usearch_hnsw
    return runs


def usearch_figures(
    vectors: np.ndarray, truth: list[np.ndarray], queries: list[int], rounds: int
) -> tuple[Any | None, dict[str, float] | None]:
    started = time.perf_counter()
    index = usearch_index(vectors)
    if index is None:
        return None, None
    seconds = time.perf_counter() - started
    found = index.search(vectors, K + 1, threads=1).keys
    rate = recall([f[f != i][:K] for i, f in enumerate(found)], truth)
    batches = [vectors[queries][i : i + BATCH] for i in range(0, len(queries), BATCH)]

    def batched() -> int:
        for batch in batches:
            index.search(batch, K + 1, threads=1)
        return len(queries)

    batch_qps = timed(rounds, {"usearch": batched})["usearch"]
    return index, {"build_seconds": seconds, "recall_at_10": rate, "batch_qps": batch_qps}


def index_choice(name: str, x: np.ndarray, y: np.ndarray, rounds: int, rng: np.random.Generator) -> IndexChoice:
    exact, approximate, built, files, build_seconds = served_pair(x, y)
    vectors = contract.read_npy(files[contract.VECTORS_FILE], what=contract.VECTORS_FILE)
    started = time.perf_counter()
    fresh = faiss.IndexHNSWFlat(vectors.shape[1], HNSW.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    fresh.hnsw.efConstruction = HNSW.ef_construction
    fresh.add(vectors)
    hnsw_seconds = time.perf_counter() - started

    everyone = list(range(len(x)))
    truth, found = neighbours(exact, everyone), neighbours(approximate, everyone)
    filtered_recall, filtered_share = {}, {}
    for value in np.unique(y):
        mask = exact.attributes.mask([MetadataFilter(SUBJECT_COLUMN, any_of=(str(value),))], [])
        assert mask is not None
        kept = f"{SUBJECT_COLUMN}={value}"
        filtered_recall[kept] = recall(neighbours(approximate, everyone, mask), neighbours(exact, everyone, mask))
        answered = [approximate.search(approximate.vector(q), K, mask=mask, exclude=q).approximate for q in everyone]
        filtered_share[kept] = float(np.mean(answered))

    sample = rng.choice(len(x), min(TIMED_QUERIES, len(x)), replace=False).tolist()
    single = timed(
        rounds,
        {
            "exact": lambda: len(neighbours(exact, sample)),
            "approximate": lambda: len(neighbours(approximate, sample)),
        },
    )
    hnsw = hnsw_from(files)
    batch = timed(rounds, batch_runs(vectors, hnsw, vectors[sample]))
    other, usearch = usearch_figures(vectors, truth, sample, rounds)
    direct = timed(rounds, direct_single(vectors, hnsw, vectors[sample], other))
    return IndexChoice(
        set=name,
        items=len(x),
        dimension=x.shape[1],
        build_seconds=build_seconds,
        clusters=int(built.clusters),
        hnsw_seconds=hnsw_seconds,
        recall_at_10=recall(found, truth),
        filtered_recall_at_10=filtered_recall,
        filtered_approximate_share=filtered_share,
        same_y_precision_at_10={
            "exact": same_subject(truth, everyone, y),
            "approximate": same_subject(found, everyone, y),
        },
        single_qps=single,
        batch_qps=batch,
        direct_single_qps=direct,
        usearch=usearch,
    )


def grown(x: np.ndarray, items: int, rng: np.random.Generator) -> np.ndarray:
    """`items` vectors: the set's rows, then jittered copies of them (a quarter of each
    column's spread), so a larger set keeps the set's structure."""
    if items <= len(x):
        return x[:items]
    copies = x[rng.integers(0, len(x), items - len(x))]
    jitter = rng.normal(0.0, 0.25, copies.shape).astype(np.float32) * x.std(axis=0)
    return np.concatenate([x, copies + jitter])


def size_point(x: np.ndarray, rounds: int, rng: np.random.Generator) -> SizePoint:
    """Exact against HNSW at one size, with FAISS and numpy directly (as the served index runs
    them, without its per-call Python)."""
    vectors = contract.normalize(x, x.mean(axis=0))
    started = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], HNSW.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW.ef_construction
    hnsw.add(vectors)
    hnsw_seconds = time.perf_counter() - started
    params = hnsw_params(max(HNSW.ef_search, 4 * K))
    sample = rng.choice(len(vectors), min(TIMED_QUERIES, len(vectors)), replace=False)
    queries = vectors[sample]
    truth = exact_batch(vectors, queries, K + 1)
    _, found = hnsw.search(queries, K + 1, params=params)
    rate = recall(
        [f[f != q][:K] for f, q in zip(found, sample, strict=True)],
        [t[t != q][:K] for t, q in zip(truth, sample, strict=True)],
    )

    def exact_single() -> int:
        for query in queries:
            scores = vectors @ query
            top = np.argpartition(-scores, K)[: K + 1]
            top[np.argsort(-scores[top])]
        return len(queries)

    def approximate_single() -> int:
        for query in queries:
            hnsw.search(query.reshape(1, -1), K + 1, params=params)
        return len(queries)

    single = timed(rounds, {"exact": exact_single, "approximate": approximate_single})
    return SizePoint(len(vectors), hnsw_seconds, rate, single, timed(rounds, batch_runs(vectors, hnsw, queries)))


def print_choice(result: IndexChoice) -> None:
    print(
        f"{result.set}: {result.items} x {result.dimension}; build_index {result.build_seconds:.1f} s "
        f"(HNSW alone {result.hnsw_seconds:.2f} s; HDBSCAN found {result.clusters} clusters)"
    )
    filtered = ", ".join(
        f"{kept} {value:.4f} (HNSW answered {result.filtered_approximate_share[kept]:.0%})"
        for kept, value in result.filtered_recall_at_10.items()
    )
    print(f"  recall@10 HNSW vs exact: {result.recall_at_10:.4f}; filtered on {filtered}")
    for method in ("exact", "approximate"):
        precision = result.same_y_precision_at_10[method]
        print(f"  same-y precision@10, {method:<11}: " + ", ".join(f"{k} {v:.3f}" for k, v in precision.items()))
    print(f"  queries/s           {'exact':>10} {'HNSW':>10} {'ratio':>7}")
    for label, rates in (("one per call", result.single_qps), (f"batches of {BATCH}", result.batch_qps)):
        ratio = rates["approximate"] / rates["exact"]
        print(f"  {label:<19} {rates['exact']:>10,.0f} {rates['approximate']:>10,.0f} {ratio:>6.1f}x")
    direct = result.direct_single_qps
    line = f"  HNSW called directly, one per call: FAISS {direct['faiss']:,.0f}/s"
    if result.usearch is not None:
        usearch = result.usearch
        line += (
            f"; usearch {direct['usearch']:,.0f}/s, batches of {BATCH} {usearch['batch_qps']:,.0f}/s, "
            f"recall@10 {usearch['recall_at_10']:.4f}, build {usearch['build_seconds']:.2f} s"
        )
    else:
        line += " (usearch not installed)"
    print(line)


def run_index(data: Path, only: str, sizes: list[int], rounds: int) -> dict[str, Any]:
    # As the detector runs searches: one FAISS thread each (the server runs them concurrently).
    configure_process()
    sets = load_sets(data, only)
    rng = np.random.default_rng(0)
    choices = []
    for name, (x, y) in sets.items():
        choices.append(index_choice(name, x, y, rounds, rng))
        print_choice(choices[-1])
    points = []
    if sizes:
        base_name = next((n for n in sets if "cifar" in n.lower()), next(iter(sets)))
        base = sets[base_name][0]
        print(f"\nby size ({base_name}, grown by jittered copies; FAISS and numpy directly), queries/s:")
        columns = ("recall@10", "HNSW build s", "exact 1", "HNSW 1", f"exact {BATCH}", f"HNSW {BATCH}")
        print(f"  {'items':>7} " + " ".join(f"{c:>12}" for c in columns))
        for items in sizes:
            point = size_point(grown(base, items, rng), rounds, rng)
            points.append(point)
            print(
                f"  {point.items:>7} {point.recall_at_10:>12.4f} {point.hnsw_seconds:>12.2f} "
                f"{point.single_qps['exact']:>12,.0f} {point.single_qps['approximate']:>12,.0f} "
                f"{point.batch_qps['exact']:>12,.0f} {point.batch_qps['approximate']:>12,.0f}"
            )
    return {"sets": [asdict(c) for c in choices], "sizes": [asdict(p) for p in points]}


# -- (b) the image library through the services ---------------------------------------------


@dataclass
class LibraryFigures:
    items: int
    held_out: int
    novel: int
    precision_at_5: float
    precision_at_5_by_subject: dict[str, float]
    ari: float  # unclustered items as singletons
    ari_clustered_only: float
    clusters: int
    unclustered: int
    cluster_sizes: list[int]
    tag_recall_at_3: float  # every true tag, out of min(3, true tags)
    detail_tag_recall_at_3: float  # the tags beyond the subject, the subject given
    tag_recall_at_3_plain: float  # every true tag, out of all of them
    missed_tags: dict[str, float]  # per tag: share of the held-out items carrying it whose top 3 lacks it
    held_out_in_subject_cluster: float
    novel_marked_new: float
    seconds: dict[str, float] = field(default_factory=dict)


def library_spec(min_samples: int) -> dict[str, Any]:
    """dataset.yaml of the library: images with their metadata, the small ViT, the index's
    id and tags columns; trained when asked."""
    return {
        "images": {
            "path": demo_library.IMAGES_FOLDER,
            "metadata": demo_library.METADATA_FILE,
            "file_column": "file_name",
        },
        "embedder": {"model": EMBEDDER_MODEL},
        "similarity": {"id_column": "id", "tags_column": "tags"},
        "min_samples": min_samples,
        "retrain": {"policy": "manual"},
    }


def write_library(volume: Path, per_subject: int, seed: int = 0) -> list[LibraryItem]:
    """The library as a user drops it: images and metadata first, dataset.yaml last."""
    folder = volume / "datasets" / LIBRARY_MODEL
    items = demo_library.generate_library(folder, per_subject=per_subject, seed=seed)
    partial = folder / "dataset.yaml.tmp"
    partial.write_text(yaml.safe_dump(library_spec(min(len(items), 40))))
    partial.replace(folder / "dataset.yaml")
    return items


def _hits(suggested: Sequence[str], true: Sequence[str], k: int) -> tuple[float, float]:
    """(hits out of min(k, true), hits out of all true) of the top k suggestions."""
    hits = len(set(suggested[:k]) & set(true))
    return hits / min(k, len(true)), hits / len(true)


def measure_library(
    detector: detector_pb2_grpc.DetectorStub,
    library: Sequence[LibraryItem],
    held_out: Sequence[LibraryItem],
    novel: Sequence[LibraryItem],
    model: str = LIBRARY_MODEL,
) -> LibraryFigures:
    """The library's figures from a detector serving its indexed version (see the module
    docstring for each one)."""
    subject = {item.id: item.subject for item in library}
    precision: dict[str, list[float]] = {}
    cluster_of: dict[str, int] = {}
    for item in library:
        query = detector_pb2.ItemQuery(item_id=item.id)
        found = detector.Similar(
            detector_pb2.SimilarRequest(model=model, query=query, top_k=PRECISION_K, exclude_self=True), timeout=30
        ).items
        share = sum(subject[f.id] == item.subject for f in found) / PRECISION_K
        precision.setdefault(item.subject, []).append(share)
        itself = detector.Similar(detector_pb2.SimilarRequest(model=model, query=query, top_k=1), timeout=30).items
        if not itself or itself[0].id != item.id:
            raise RuntimeError(f"{item.id} is not its own nearest item")
        cluster_of[item.id] = itself[0].cluster
    subjects = [item.subject for item in library]
    labels = [cluster_of[item.id] for item in library]
    # An unclustered item is a cluster of its own: a singleton label per item.
    singletons = [c if c >= 0 else -1 - i for i, c in enumerate(labels)]
    clustered = [i for i, c in enumerate(labels) if c >= 0]
    listing = detector.Clusters(detector_pb2.ClustersRequest(model=model, representatives=1), timeout=30)
    # The subject's cluster: the one holding most of its library items (None: all unclustered).
    home: dict[str, int | None] = {}
    for name in set(subjects):
        counts = Counter(c for c, s in zip(labels, subjects, strict=True) if s == name and c >= 0)
        home[name] = counts.most_common(1)[0][0] if counts else None

    def assignments(items: Sequence[LibraryItem]) -> list[detector_pb2.ClusterAssignment]:
        out: list[detector_pb2.ClusterAssignment] = []
        for start in range(0, len(items), ASSIGN_BATCH):
            queries = [detector_pb2.ItemQuery(image=i.image) for i in items[start : start + ASSIGN_BATCH]]
            request = detector_pb2.ClustersRequest(model=model, representatives=0, assign=queries)
            out.extend(detector.Clusters(request, timeout=60).assignments)
        return out

    at_home = [a.cluster == home[i.subject] for i, a in zip(held_out, assignments(held_out), strict=True)]
    all_tags, details, plain = [], [], []
    carried: Counter[str] = Counter()
    missed: Counter[str] = Counter()
    for item in held_out:
        query = detector_pb2.ItemQuery(image=item.image)
        request = detector_pb2.SuggestTagsRequest(model=model, query=query, top_k=TAGS_K)
        suggested = [s.tag for s in detector.SuggestTags(request, timeout=30).suggestions]
        of_k, of_all = _hits(suggested, item.tags, TAGS_K)
        carried.update(item.tags)
        missed.update(t for t in item.tags if t not in suggested[:TAGS_K])
        all_tags.append(of_k)
        plain.append(of_all)
        request = detector_pb2.SuggestTagsRequest(model=model, query=query, tags=[item.subject], top_k=TAGS_K)
        suggested = [s.tag for s in detector.SuggestTags(request, timeout=30).suggestions]
        details.append(_hits(suggested, item.detail_tags, TAGS_K)[0])
    return LibraryFigures(
        items=len(library),
        held_out=len(held_out),
        novel=len(novel),
        precision_at_5=float(np.mean([v for values in precision.values() for v in values])),
        precision_at_5_by_subject={s: float(np.mean(v)) for s, v in sorted(precision.items())},
        ari=float(adjusted_rand_score(subjects, singletons)),
        ari_clustered_only=float(adjusted_rand_score([subjects[i] for i in clustered], [labels[i] for i in clustered])),
        clusters=len(listing.clusters),
        unclustered=int(listing.unclustered),
        cluster_sizes=[int(c.size) for c in listing.clusters],
        tag_recall_at_3=float(np.mean(all_tags)) if all_tags else 0.0,
        detail_tag_recall_at_3=float(np.mean(details)) if details else 0.0,
        tag_recall_at_3_plain=float(np.mean(plain)) if plain else 0.0,
        missed_tags={t: missed[t] / carried[t] for t in sorted(carried)},
        held_out_in_subject_cluster=float(np.mean(at_home)) if at_home else 0.0,
        novel_marked_new=float(np.mean([a.is_new for a in assignments(novel)])) if novel else 0.0,
    )


def print_library(figures: LibraryFigures) -> None:
    by_subject = ", ".join(f"{s} {v:.3f}" for s, v in figures.precision_at_5_by_subject.items())
    print(f"library: {figures.items} items, {figures.held_out} held out, {figures.novel} novel")
    print(f"  precision@5 (same subject)      {figures.precision_at_5:.3f} ({by_subject})")
    print(
        f"  ARI of clusters vs subjects     {figures.ari:.3f} (unclustered as singletons; "
        f"{figures.ari_clustered_only:.3f} over the clustered items); {figures.clusters} clusters "
        f"{figures.cluster_sizes}, {figures.unclustered} unclustered"
    )
    print(
        f"  tag recall@3, held out          all tags {figures.tag_recall_at_3:.3f} "
        f"(out of all true tags: {figures.tag_recall_at_3_plain:.3f}); "
        f"details, subject given {figures.detail_tag_recall_at_3:.3f}"
    )
    missed = ", ".join(f"{t} {share:.0%}" for t, share in figures.missed_tags.items())
    print(f"  true tags missing from the top 3: {missed}")
    print(f"  held out in their subject's cluster {figures.held_out_in_subject_cluster:.3f}")
    print(f"  novel ({demo_library.NOVEL_SUBJECT}) marked new        {figures.novel_marked_new:.3f}")
    if figures.seconds:
        print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in figures.seconds.items()))


@contextmanager
def library_stack(root: Path) -> Iterator[tuple[detector_pb2_grpc.DetectorStub, trainer_pb2_grpc.TrainerStub]]:
    """Embedder (the small ViT), detector and trainer as child processes on ephemeral ports;
    the trainer trains only when asked."""
    vit = small_vit(root / "small-vit")
    volume, repository = root / "data", root / "models"
    (volume / "datasets").mkdir(parents=True)
    repository.mkdir()
    models = json.dumps({EMBEDDER_MODEL: {"model_id": str(vit), "modality": "image"}})
    procs = []
    channels: list[grpc.Channel] = []
    try:
        embedder, embedder_port = start_service(
            "oddity.embedder.main",
            ["--cache-dir", str(root / "cache"), "--models", models, "--default-model", EMBEDDER_MODEL],
            root / "embedder.log",
            timeout=300,
        )
        procs.append(embedder)
        embedder_target = f"127.0.0.1:{embedder_port}"
        detector, detector_port = start_service(
            "oddity.detector.main",
            ["--model-repository", str(repository), "--embedder", embedder_target],
            root / "detector.log",
        )
        procs.append(detector)
        trainer, trainer_port = start_service(
            "oddity.trainer.main",
            [
                *("--data-volume", str(volume), "--model-repository", str(repository)),
                *("--embedder", embedder_target, "--detectors", json.dumps([f"127.0.0.1:{detector_port}"])),
                *("--no-watch", "--scan-interval-seconds", "86400"),
            ],
            root / "trainer.log",
        )
        procs.append(trainer)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
        channels = [grpc.insecure_channel(f"127.0.0.1:{p}", options=options) for p in (detector_port, trainer_port)]
        yield detector_pb2_grpc.DetectorStub(channels[0]), trainer_pb2_grpc.TrainerStub(channels[1])
    finally:
        for channel in channels:
            channel.close()
        for proc in reversed(procs):
            stop_service(proc)


def train_library(trainer: trainer_pb2_grpc.TrainerStub, detector: detector_pb2_grpc.DetectorStub) -> int:
    """Train the library (the first job waits for the embedder's export) and wait until the
    detector serves the version; its number."""
    job = trainer.Train(trainer_pb2.TrainRequest(dataset=LIBRARY_MODEL, force=True), timeout=60).job
    for update in trainer.WatchJob(trainer_pb2.WatchJobRequest(job_id=job.id), timeout=1800):
        job = update.job
    if job.state != trainer_pb2.JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"the library's job ended {trainer_pb2.JobState.Name(job.state)}: {job.message}")
    deadline = time.monotonic() + 60
    while True:
        models = detector.ListModels(detector_pb2.ListModelsRequest(), timeout=30).models
        if any(m.name == LIBRARY_MODEL and m.serving_version == job.published_version for m in models):
            return int(job.published_version)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the detector does not serve version {job.published_version} of the library")
        detector.LoadModel(detector_pb2.LoadModelRequest(model=LIBRARY_MODEL), timeout=30)
        time.sleep(0.2)


def run_library(per_subject: int, held_out_per_subject: int) -> LibraryFigures:
    with tempfile.TemporaryDirectory(prefix="oddity-similarity-") as folder, library_stack(Path(folder)) as stubs:
        detector, trainer = stubs
        library = write_library(Path(folder) / "data", per_subject)
        started = time.perf_counter()
        train_library(trainer, detector)
        trained = time.perf_counter() - started
        held_out = demo_library.make_items(held_out_per_subject, seed=1, prefix="held")
        novel = demo_library.make_items(held_out_per_subject, seed=2, subjects=(demo_library.NOVEL_SUBJECT,))
        started = time.perf_counter()
        figures = measure_library(detector, library, held_out, novel)
        figures.seconds = {"train and publish": trained, "measure": time.perf_counter() - started}
    print_library(figures)
    return figures


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("index", "library", "all"), default="all")
    parser.add_argument("--sets", default="", help="comma-separated name substrings, e.g. CIFAR,20news")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the anomaly-benchmarks folder")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per speed figure (the median is printed)")
    parser.add_argument("--sizes", default="", help="comma-separated item counts for the by-size comparison")
    parser.add_argument("--per-subject", type=int, default=80, help="library items per subject")
    parser.add_argument("--held-out", type=int, default=20, help="held-out (and novel) items per subject")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    print(describe(), flush=True)
    print(
        f"faiss {faiss.__version__}; HNSW m={HNSW.hnsw_m}, efConstruction={HNSW.ef_construction}, "
        f"efSearch=max({HNSW.ef_search}, 4k)"
    )
    results: dict[str, Any] = {"machine": describe()}
    if args.part in ("index", "all"):
        sizes = [int(s) for s in args.sizes.split(",") if s]
        results["index"] = run_index(args.data, args.sets, sizes, args.rounds)
    if args.part in ("library", "all"):
        print()
        results["library"] = asdict(run_library(args.per_subject, args.held_out))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
