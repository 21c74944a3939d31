"""Detector services: the trainer resolves a service name to every address behind it (a
Kubernetes headless Service resolves to one per replica) and tells each replica of a new
version; a name that does not resolve leaves the others told."""

import asyncio

import pytest

from oddity.common.clients import DetectorAdminClient
from oddity.trainer.announcer import DetectorFleet
from oddity.v1 import detector_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import datasets
from tests.support.waiting import wait_for


def test_every_address_of_a_detector_service_gets_a_client():
    made: list[tuple[str, str | None]] = []

    def make(address: str, name: str | None) -> DetectorAdminClient:
        made.append((address, name))
        return DetectorAdminClient(address)

    async def resolve() -> list[str]:
        fleet = DetectorFleet(["127.0.0.2:50052"], ["localhost:50052", "no-such-host.invalid:50052"], make)
        try:
            first = [c.target for c in await fleet.clients()]
            second = [c.target for c in await fleet.clients()]
            assert first == second  # resolved again, the same clients kept
            return first
        finally:
            await fleet.close()

    targets = asyncio.run(resolve())
    assert targets[0] == "127.0.0.2:50052"
    assert "127.0.0.1:50052" in targets[1:]
    assert ("127.0.0.1:50052", "localhost") in made
    assert len(made) == len(targets)  # one client per address, made once


@pytest.mark.slow
def test_the_trainer_tells_the_replicas_behind_a_service_name(data_volume, repository):
    detector = start_detector(repository, poll_interval_seconds=3600)
    trainer = start_trainer(data_volume, repository, detector_services=[f"localhost:{detector.server.port}"])
    try:
        datasets.write_dataset(
            data_volume, "sensors", datasets.autoencoder_spec(), {"rows.csv": datasets.sensor_frame(300)}
        )
        # The detector polls once an hour here: serving means the trainer's LoadModel reached it.
        wait_for(
            lambda: detector.stub.ListModels(detector_pb2.ListModelsRequest()).models,
            timeout=120,
            what="the replica told to load the new version",
        )
    finally:
        trainer.close()
        detector.close()
