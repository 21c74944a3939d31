"""docs/metrics.md cannot drift: the three services are started, given a little work so every
labelled series exists, and every metric each exposes must be a row of the table (with its
type, labels and service), and every row must be exposed by the services it names."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from oddity.common.metrics import new_metrics_registry
from oddity.v1 import detector_pb2, embedder_pb2, trainer_pb2
from tests.conftest import SharedEncoders, start_detector, start_embedder, start_trainer
from tests.support import datasets, models
from tests.support.client import detect_request
from tests.support.servers import repo_root, wait_models
from tests.trainer.test_robustness import run_job

DOC = repo_root() / "docs" / "metrics.md"
SERVICES = ("detector", "trainer", "embedder")


class Row:
    def __init__(self, line: str) -> None:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 5, f"a row of docs/metrics.md has {len(cells)} cells: {line}"
        self.name = cells[0].strip("`")
        self.type = cells[1]
        self.labels = set(re.findall(r"`([^`]+)`", cells[2]))
        self.services = set(SERVICES) if cells[3] == "all" else {cells[3]}


def documented() -> dict[str, Row]:
    rows = [Row(line) for line in DOC.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    table = {row.name: row for row in rows}
    assert len(table) == len(rows), "a metric is documented twice"
    return table


def exposed(text: str) -> dict[str, tuple[str, set[frozenset[str]]]]:
    """Metric name as queried (counters with `_total`) -> (type, label-name sets of its samples).
    The `_created` series of counters and histograms, which this text format shows as gauges
    of their own, are left out."""
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    metrics = {}
    for family in families:
        if family.name.endswith("_created") and family.name.removesuffix("_created") in names:
            continue
        name = f"{family.name}_total" if family.type == "counter" else family.name
        labels = {frozenset(set(s.labels) - {"le"}) for s in family.samples}
        metrics[name] = (family.type, labels)
    return metrics


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def detector_metrics(repository: Path) -> str:
    """A detector that loaded, swapped, refused a version and scored rows."""
    detector = start_detector(repository)
    try:
        fit = models.fit_pca_group(models.normal_rows(300, 4), components=1)
        models.publish_simple(repository, "m", fit, dimension=4)
        detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
        detector.stub.Detect(detect_request("m", models.normal_rows(3, 4)))
        models.publish_simple(repository, "m", fit, dimension=4)
        (repository / "m" / "3").mkdir()  # a version folder without its files
        detector.stub.LoadModel(detector_pb2.LoadModelRequest(model="m"))
        return detector.metrics_text()
    finally:
        detector.close()


def trainer_metrics(data_volume: Path, repository: Path) -> str:
    spec = {"sources": [{"path": "*.csv"}], "model": {"kind": "knn"}, "retrain": {"policy": "manual"}}
    datasets.write_dataset(data_volume, "sensors", spec, {"rows.csv": datasets.sensor_frame(100)})
    trainer = start_trainer(data_volume, repository)
    try:
        assert run_job(trainer, "sensors").state == trainer_pb2.JOB_STATE_SUCCEEDED
        return trainer.metrics_text()
    finally:
        trainer.close()


def embedder_metrics(shared: SharedEncoders) -> str:
    embedder = start_embedder(shared.cache_dir, shared.only("vit"))
    try:
        wait_models(embedder, timeout=120)
        embedder.stub.Embed(embedder_pb2.EmbedRequest(items=[embedder_pb2.EmbedItem(image=png())]))
        return embedder.metrics_text()
    finally:
        embedder.close()


@pytest.fixture(scope="module")
def services(tmp_path_factory, shared_encoders) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("metrics-doc")
    for folder in ("models", "trained", "data/datasets"):
        (root / folder).mkdir(parents=True)
    return {
        "detector": exposed(detector_metrics(root / "models")),
        "trainer": exposed(trainer_metrics(root / "data", root / "trained")),
        "embedder": exposed(embedder_metrics(shared_encoders)),
    }


def test_every_exposed_metric_is_documented(services):
    table = documented()
    for service, metrics in services.items():
        for name, (kind, label_sets) in metrics.items():
            if not name.startswith("oddity_"):
                continue
            row = table.get(name)
            assert row is not None, f"{service} exposes {name}, which docs/metrics.md does not list"
            assert service in row.services, f"{name} is exposed by {service}; docs/metrics.md says {row.services}"
            assert kind == row.type, f"{name} is a {kind}; docs/metrics.md says {row.type}"
            assert label_sets, f"{name} has no series on {service}: give the test the work that makes one"
            assert label_sets == {frozenset(row.labels)}, f"{name} has labels {label_sets}, not {row.labels}"


def test_every_documented_metric_is_exposed(services):
    process = exposed(generate_latest(new_metrics_registry(process_metrics=True)).decode())
    for name, row in documented().items():
        if not name.startswith("oddity_"):
            # Process metrics: what every service's registry adds (the tests run without them).
            assert name in process, f"docs/metrics.md lists {name}, which no service registry exposes"
            assert process[name][0] == row.type and process[name][1] <= {frozenset(row.labels)}, name
            continue
        for service in row.services:
            assert name in services[service], f"docs/metrics.md lists {name} for the {service}, which lacks it"
