"""The groups of a similarity index on real labelled data (scikit-learn's digits and wine, as
the trainer indexes a table): most items belong to a group and the groups follow the classes;
`similarity.cluster_reach` moves the share left in no group the documented way; a group under
min_cluster_size is dissolved; and the share and count reach the history and the SDK as the
catalog has them. Figures measured in bench/grouping.py."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import datasets as sklearn_datasets
from sklearn.metrics import adjusted_rand_score

from oddity.client import DetectorClient
from oddity.common import bundle
from oddity.common.bundle import index_contract as contract
from oddity.trainer.index_builder import IndexItems, IndexSettings, build_index, group_items, space_normalization
from oddity.trainer.spec import DatasetSpec
from oddity.v1 import trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.trainer.test_robustness import run_job


def table_vectors(rows: np.ndarray) -> np.ndarray:
    """Rows as a table's index holds them: standardized per column, L2-normalized."""
    rows = np.asarray(rows, dtype=np.float32)
    center, scale = space_normalization(rows, contract.FEATURES_SPACE)
    return contract.normalize(rows, center, scale)


def unclustered_share(labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(labels) == contract.NO_CLUSTER))


def test_digits_are_grouped_by_digit_with_few_items_left_out():
    digits = sklearn_datasets.load_digits()
    grouping = group_items(table_vectors(digits.data))
    # Measured: 15 groups, none left out, ARI 0.671 (k-means told the true 10 groups: 0.570).
    assert unclustered_share(grouping.labels) <= 0.10
    assert 8 <= grouping.count <= 20
    assert adjusted_rand_score(digits.target, grouping.labels) >= 0.6


def test_a_larger_reach_leaves_fewer_items_in_no_group():
    wine = sklearn_datasets.load_wine()
    vectors = table_vectors(wine.data)
    labels = {reach: group_items(vectors, IndexSettings(cluster_reach=reach)).labels for reach in (2.0, 3.0, 5.0)}
    shares = [unclustered_share(labels[reach]) for reach in (2.0, 3.0, 5.0)]
    # Measured: 6.2%, 1.1%, 0% of the 178 wines; the three cultivars found at every reach.
    assert shares[0] > shares[1] > shares[2]
    assert shares[0] <= 0.10
    for near, far in ((2.0, 3.0), (3.0, 5.0)):
        grouped = labels[near] != contract.NO_CLUSTER
        assert (labels[far][grouped] != contract.NO_CLUSTER).all()  # a longer reach only takes items in
        assert adjusted_rand_score(labels[near][grouped], labels[far][grouped]) == 1.0  # into the same groups
    assert adjusted_rand_score(wine.target, labels[5.0]) >= 0.8  # measured 0.884


def test_a_group_smaller_than_min_cluster_size_is_dissolved():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    labels = np.repeat([0, 1, 2], [40, 40, 12])
    vectors = contract.normalize(centres[labels] + rng.normal(size=(92, 16)) * 0.3)
    kept = group_items(vectors, IndexSettings(min_cluster_size=10))
    assert kept.count == 3 and adjusted_rand_score(labels, kept.labels) == 1.0
    dissolved = group_items(vectors, IndexSettings(min_cluster_size=15))
    assert dissolved.count == 2
    # Its items join no other group: they lie far beyond either group's reach.
    assert (dissolved.labels[labels == 2] == contract.NO_CLUSTER).all()
    assert adjusted_rand_score(labels[labels < 2], dissolved.labels[labels < 2]) == 1.0


def test_the_index_reports_the_count_and_the_items_in_no_group():
    wine = sklearn_datasets.load_wine()
    built = build_index(
        IndexItems(ids=[f"wine-{i}" for i in range(len(wine.data))], vectors=wine.data),
        space=contract.FEATURES_SPACE,
        settings=IndexSettings(cluster_reach=2.0),
    )
    catalog = contract.read_catalog(built.files[contract.CATALOG_FILE])
    labels = np.asarray(catalog.item_clusters)
    assert built.index.clusters == len(catalog.clusters) == 3
    assert built.unclustered == np.sum(labels == contract.NO_CLUSTER) == 11  # measured: 6.2% of 178
    assert [c.size for c in catalog.clusters] == [np.sum(labels == c.id) for c in catalog.clusters]
    assert sum(c.size for c in catalog.clusters) + built.unclustered == 178


@pytest.mark.parametrize(("similarity", "reach"), [({}, 5.0), ({"cluster_reach": 2.5}, 2.5)])
def test_the_reach_is_a_similarity_setting(similarity, reach):
    spec = DatasetSpec.model_validate({"sources": [{"path": "rows.csv"}], "similarity": similarity})
    assert spec.index.cluster_reach == reach


def test_a_negative_reach_is_a_spec_error():
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        DatasetSpec.model_validate({"sources": [{"path": "rows.csv"}], "similarity": {"cluster_reach": -1}})


@pytest.mark.slow  # a trainer job per reach and a detector
def test_the_history_and_the_sdk_report_the_share_the_catalog_holds(data_volume, repository):
    wine = sklearn_datasets.load_wine()
    rows = pd.DataFrame(wine.data, columns=[f"x{i}" for i in range(wine.data.shape[1])])
    for name, similarity in (("wine", {}), ("wine-near", {"cluster_reach": 2})):
        spec = {
            "sources": [{"path": "rows.csv"}],
            "model": {"kind": "knn"},
            "retrain": {"policy": "manual"},
            "similarity": similarity,
        }
        datasets.write_dataset(data_volume, name, spec, {"rows.csv": rows})
    trainer = start_trainer(data_volume, repository)
    detector = start_detector(repository)
    try:
        shares = {}
        for name in ("wine", "wine-near"):
            job = run_job(trainer, name)
            assert job.state == trainer_pb2.JOB_STATE_SUCCEEDED, job.message
            version = bundle.load_verified_version(repository, name, 1)
            catalog = contract.read_catalog(version.index[contract.CATALOG_FILE])
            unclustered = int(np.sum(np.asarray(catalog.item_clusters) == contract.NO_CLUSTER))
            events = trainer.stub.History(
                trainer_pb2.HistoryRequest(dataset=name, event_types=["TRAINING_COMPLETED"])
            ).events
            figures = json.loads(events[-1].details_json)["index"]
            assert (figures["clusters"], figures["unclustered"]) == (len(catalog.clusters), unclustered)
            assert figures["unclustered_share"] == round(unclustered / 178, 4)
            with DetectorClient(detector.server.target) as client:
                client.load_model(name)
                listing = client.clusters(name)
            assert (len(listing.clusters), listing.unclustered) == (len(catalog.clusters), unclustered)
            assert listing.unclustered_share == unclustered / 178
            shares[name] = listing.unclustered_share
        assert shares["wine-near"] > shares["wine"]  # measured: 6.2% and 0%
    finally:
        detector.close()
        trainer.close()
