"""A training job (and the detector's DetectImages) spreads its embedding over every embedder
replica behind one address setting, and a job loses none of its work when one of them dies.

Two embedder processes serve the same tiny ViT; the trainer's `embedder` setting names both,
as an address list or as one DNS name, and the job keeps several batches in flight. Each
embedder's own /metrics counts what it embedded. The DNS name is answered by a name server
of the test's own (gRPC's resolver takes a DNS server in the target: dns://server/name:port):
its answer grows by a replica mid-test, as a headless Service's does when a pod starts."""

import asyncio
import socket
import struct
import threading
import urllib.request
from concurrent import futures

import grpc
import numpy as np
import pandas as pd
import pytest
import trustme
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from oddity.common import bundle
from oddity.common.clients import RemoteService
from oddity.common.errors import Unavailable
from oddity.v1 import detector_pb2, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import drawings
from tests.support.certificates import identity
from tests.support.servers import ServiceProcess, embedder_process, wait_serving
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow  # real embedder processes and a trainer

BATCH = 4
IN_FLIGHT = 4
# Each Embed call waits this long for company in the embedder's batcher: the embedding of a
# dataset takes seconds, long enough to stop an embedder in the middle of it.
DELAY_MS = 40


@pytest.fixture(scope="module")
def vit(shared_encoders):
    """The tiny ViT, and the session's export cache, which the embedders share (they load, not export)."""
    models = {"vit": {"model_id": shared_encoders.models["vit"].model_id, "modality": "image"}}
    return models, shared_encoders.cache_dir


def two_embedders(vit, hosts: tuple[str, str] = ("127.0.0.1", "127.0.0.1"), *flags: str) -> list[ServiceProcess]:
    """Two embedders of the tiny ViT; on two addresses, they share one port."""
    models, cache = vit
    port = free_port() if hosts[0] != hosts[1] else 0
    started = []
    try:
        for host in hosts:
            embedder = embedder_process(
                cache, models, "--host", host, "--max-batch-delay-ms", str(DELAY_MS), *flags, port=port
            )
            wait_serving(f"{host}:{embedder.port}", "oddity.v1.Embedder/vit", timeout=180)
            started.append(embedder)
    except BaseException:
        for embedder in started:
            embedder.kill()
        raise
    return started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class NameServer:
    """A DNS server on 127.0.0.1 (UDP) for the test: A queries get `addresses` (which the test
    changes), AAAA queries no address; `answers` lists what each A query was told."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.answers: list[list[str]] = []
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.1)  # to look at `stopping` between queries
        self.port = self.socket.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                query, client = self.socket.recvfrom(512)
            except TimeoutError:
                continue
            end = 12  # the header; then the name, one length-prefixed label after another
            while query[end]:
                end += 1 + query[end]
            (kind,) = struct.unpack(">H", query[end + 1 : end + 3])
            addresses = list(self.addresses) if kind == 1 else []
            if kind == 1:
                self.answers.append(addresses)
            # Same id, a response without error, the question as asked, then one A record each.
            reply = query[:2] + struct.pack(">HHHHH", 0x8180, 1, len(addresses), 0, 0) + query[12 : end + 5]
            for address in addresses:
                reply += struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(address)
            self.socket.sendto(reply, client)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.socket.close()


def items_embedded(embedder: ServiceProcess) -> float:
    """oddity_embedder_items_total of the embedder's vit model, from its own /metrics."""
    url = f"http://127.0.0.1:{embedder.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "oddity_embedder_items_total" and sample.labels.get("model") == "vit"
    )


def write_drawings(folder, n: int, seed: int = 11) -> None:
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, age in enumerate(rng.uniform(3, 12, n)):
        (folder / "images" / f"d{i:04d}.png").write_bytes(drawings.drawing(age, rng))
        rows.append({"file_name": f"d{i:04d}.png", "age": round(float(age), 1)})
    pd.DataFrame(rows).to_csv(folder / "metadata.csv", index=False)
    spec = {
        "images": {"path": "images", "metadata": "metadata.csv"},
        "embedder": {"model": "vit", "batch_size": BATCH},
        "model": {"kind": "autoencoder", "params": {"epochs": 10, "hidden": [16], "bottleneck": 4}},
        "min_samples": 50,
        "retrain": {"policy": "manual"},
        "validation": {"anomaly_rate": [0.0, 0.2]},
    }
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec))


def embedding_stats(trainer, dataset: str = "drawings") -> dict:
    completed = trainer.stub.History(
        trainer_pb2.HistoryRequest(dataset=dataset, event_types=["TRAINING_COMPLETED"])
    ).events[-1]
    stats = completed.details["embedding"]
    return {key: int(stats[key]) for key in ("items", "embedded", "cached", "refused")}


def final_job(trainer, job_id: str):
    updates = list(trainer.stub.WatchJob(trainer_pb2.WatchJobRequest(job_id=job_id), timeout=300))
    return updates[-1].job


def test_a_job_and_the_detector_spread_their_calls_over_both_embedders(vit, data_volume, repository):
    items = 96  # 24 batches
    write_drawings(data_volume / "datasets" / "drawings", items)
    embedders = two_embedders(vit)
    addresses = ",".join(e.target for e in embedders)
    trainer = start_trainer(data_volume, repository, embedder=addresses, embedder_batches_in_flight=IN_FLIGHT)
    detector = None
    try:
        job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset="drawings")).job
        final = final_job(trainer, job.id)
        assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.message
        assert bundle.list_versions(repository / "drawings") == [1]
        assert embedding_stats(trainer) == {"items": items, "embedded": items, "cached": 0, "refused": 0}
        counts = [items_embedded(e) for e in embedders]
        # Every item was embedded once, and each replica embedded part of them.
        assert sum(counts) == items
        assert all(count > 0 for count in counts), counts

        # The detector serving the version: its DetectImages calls go to both too.
        detector = start_detector(repository, embedder=addresses)
        wait_serving(detector.server.target, "oddity.v1.Detector", timeout=60)
        rng = np.random.default_rng(3)
        calls = 8
        for _ in range(calls):
            request = detector_pb2.DetectImagesRequest(model="drawings", images=[drawings.drawing(6.0, rng)])
            assert len(detector.stub.DetectImages(request, timeout=60).result.scores) == 1
        by_detector = [items_embedded(e) - before for e, before in zip(embedders, counts, strict=True)]
        assert sum(by_detector) == calls
        assert all(count > 0 for count in by_detector), by_detector
    finally:
        if detector is not None:
            detector.close()
        trainer.close()
        for embedder in embedders:
            embedder.kill()


def test_an_embedder_killed_mid_job_costs_no_failed_job(vit, data_volume, repository):
    items = 240  # 60 batches
    write_drawings(data_volume / "datasets" / "drawings", items)
    doomed, survivor = two_embedders(vit)
    trainer = start_trainer(
        data_volume,
        repository,
        embedder=f"{doomed.target},{survivor.target}",
        embedder_batches_in_flight=IN_FLIGHT,
    )
    try:
        job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset="drawings")).job
        # Once the doomed embedder has answered a few batches of this job: SIGKILL, mid-job.
        wait_for(lambda: items_embedded(doomed) >= 2 * BATCH, 120, "the doomed embedder's first batches")
        doomed.kill()
        running = trainer.stub.GetJob(trainer_pb2.GetJobRequest(job_id=job.id)).job
        assert (running.state, running.phase) == (trainer_pb2.JOB_STATE_RUNNING, "embedding"), running.message

        final = final_job(trainer, job.id)
        assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.message
        assert final.published_version == 1
        # Every item has its vector: the batches that were at the doomed embedder went to the survivor.
        assert embedding_stats(trainer) == {"items": items, "embedded": items, "cached": 0, "refused": 0}
    finally:
        trainer.close()
        doomed.kill()
        survivor.kill()


def test_a_dns_name_spreads_a_job_over_its_addresses_and_finds_a_replica_added_later(vit, data_volume, repository):
    items = 64  # 16 batches per job
    write_drawings(data_volume / "datasets" / "first", items, seed=1)
    write_drawings(data_volume / "datasets" / "second", items, seed=2)  # other images: nothing cached
    # Each embedder closes a connection after a second: its clients resolve the name again.
    first, added = two_embedders(vit, ("127.0.0.1", "127.0.0.2"), "--max-connection-age-seconds", "1")
    names = NameServer(["127.0.0.1"])
    target = f"dns://127.0.0.1:{names.port}/embedders.oddity.test:{first.port}"
    trainer = start_trainer(data_volume, repository, embedder=target, embedder_batches_in_flight=IN_FLIGHT)
    try:
        job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset="first")).job
        final = final_job(trainer, job.id)
        assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.message
        assert [items_embedded(first), items_embedded(added)] == [items, 0]

        # The name now resolves to both, as a headless Service's does once a new pod is ready.
        names.addresses = ["127.0.0.1", "127.0.0.2"]
        wait_for(lambda: ["127.0.0.1", "127.0.0.2"] in names.answers, 60, "the trainer to resolve the name again")
        job = trainer.stub.Train(trainer_pb2.TrainRequest(dataset="second")).job
        final = final_job(trainer, job.id)
        assert final.state == trainer_pb2.JOB_STATE_SUCCEEDED, final.message
        assert embedding_stats(trainer, "second") == {"items": items, "embedded": items, "cached": 0, "refused": 0}
        second_job = [items_embedded(first) - items, items_embedded(added)]
        assert sum(second_job) == items
        assert all(count > 0 for count in second_job), second_job
    finally:
        trainer.close()
        names.close()
        for embedder in (first, added):
            embedder.kill()


class HealthClient(RemoteService):
    """The clients' channel (targets, TLS, retries) on a server's health service."""

    service = "grpc.health.v1.Health"
    label = "health"
    stub_class = health_pb2_grpc.HealthStub


def test_over_tls_a_dns_name_is_checked_against_the_certificate(tmp_path):
    """In the prod overlay, the embedders' certificate carries the headless Service's name."""
    ca = trustme.CA()
    server = identity(tmp_path / "server", ca, "embedders.oddity.test")
    client = identity(tmp_path / "client", ca, "trainer")
    port = free_port()
    health_server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), health_server)
    credentials = grpc.ssl_server_credentials(
        [(server.key.read_bytes(), server.cert.read_bytes())],
        root_certificates=ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    health_server.add_secure_port(f"127.0.0.1:{port}", credentials)
    health_server.start()
    names = NameServer(["127.0.0.1"])

    async def check(name: str) -> int:
        caller = HealthClient(f"dns://127.0.0.1:{names.port}/{name}:{port}", tls=client.files(), timeout=2)
        try:
            return (await caller._call("Check", health_pb2.HealthCheckRequest())).status
        finally:
            await caller.close()

    try:
        assert asyncio.run(check("embedders.oddity.test")) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(Unavailable, match="health at dns://"):  # a name the certificate does not carry
            asyncio.run(check("elsewhere.oddity.test"))
    finally:
        names.close()
        health_server.stop(0)
