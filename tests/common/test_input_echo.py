"""A name a caller sends comes back cut: an unknown model or dataset of 201 characters, 10 KB or
a megabyte is NOT_FOUND with a short message (a status travels in the trailers, which a client
refuses above 8 KiB), and the server's log line for it stays short too."""

from __future__ import annotations

import json

import grpc
import pytest

from oddity.common.errors import MESSAGE_LIMIT_BYTES, NotFound, shown
from oddity.common.logging import get_logger
from oddity.v1 import detector_pb2, trainer_pb2
from tests.conftest import start_detector, start_trainer
from tests.support import models
from tests.support.client import detect_request
from tests.support.waiting import wait_for

LENGTHS = (201, 10_000, 1_000_000)  # a megabyte fits the 4 MB message limit as a protobuf field


def failed_lines(capfd) -> list[str]:
    return [line for line in capfd.readouterr().out.splitlines() if '"request failed"' in line]


def refusal(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=30)
    return error.value


def test_shown_cuts_a_long_name_and_says_how_long_it_was():
    assert shown("sensors") == "sensors"
    assert shown("x" * 1_000_000) == "x" * 200 + "…(1000000 characters)"


def test_every_error_message_fits_in_a_status():
    message = NotFound("dataset " + "€" * 1_000_000 + " not found").message
    assert message.endswith("…(1000018 characters)")
    assert len(message.encode()) <= MESSAGE_LIMIT_BYTES + 30


@pytest.mark.parametrize("length", LENGTHS)
def test_an_unknown_model_of_any_name_length_is_not_found_with_a_short_message(repository, capfd, length):
    models.publish_simple(repository, "m", models.fit_pca_group(models.normal_rows(200, 4), components=2), dimension=4)
    detector = start_detector(repository)
    try:
        stub = detector.stub
        wait_for(lambda: stub.ListModels(detector_pb2.ListModelsRequest(), timeout=10).models, what="model m served")
        capfd.readouterr()
        name = "x" * length
        for call, request in (
            (stub.Detect, detect_request(name, models.normal_rows(2, 4))),
            (stub.GetModel, detector_pb2.GetModelRequest(model=name)),
            (stub.LoadModel, detector_pb2.LoadModelRequest(model=name)),
            (stub.UnloadModel, detector_pb2.UnloadModelRequest(model=name)),
        ):
            error = refusal(call, request)
            assert (error.code(), len(error.details()) <= 300) == (grpc.StatusCode.NOT_FOUND, True)
            assert f"…({length} characters)" in error.details()
    finally:
        detector.close()
    lines = failed_lines(capfd)
    assert len(lines) == 4
    assert max(len(line) for line in lines) <= 1_000


def test_an_unknown_dataset_of_any_name_length_is_not_found(data_volume, repository, capfd):
    trainer = start_trainer(data_volume, repository)
    try:
        for length in LENGTHS:
            error = refusal(trainer.stub.GetStatus, trainer_pb2.GetStatusRequest(dataset="d" * length))
            assert (error.code(), len(error.details()) <= 300 + len(str(data_volume))) == (
                grpc.StatusCode.NOT_FOUND,
                True,
            )
            assert f"…({length} characters)" in error.details()
    finally:
        trainer.close()
    lines = failed_lines(capfd)
    assert len(lines) == len(LENGTHS)
    assert max(len(line) for line in lines) <= 1_000 + len(str(data_volume))


def test_log_lines_cut_names_and_long_texts(capfd):
    capfd.readouterr()
    get_logger("oddity.test").warning("long fields", model="m" * 1_000_000, error="e" * 1_000_000, rows=3)
    (line,) = capfd.readouterr().out.splitlines()
    event = json.loads(line)
    assert event["model"] == "m" * 200 + "…(1000000 characters)"
    assert event["error"] == "e" * 16_000 + "…(1000000 characters)"
    assert event["rows"] == 3
