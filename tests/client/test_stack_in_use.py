"""What is in the way of a stack, said before it starts: every port in use is named with the
option that moves it, and the folder lock names its holder until it is released."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from oddity.cli.exit_codes import IN_USE
from oddity.cli.stack import DataFolder, FolderLock, Ports, StackInUse, StackSettings, check_ports
from tests.client.conftest import invoke


@pytest.fixture
def taken_ports() -> Iterator[list[int]]:
    """Four ports something listens on."""
    with ExitStack() as sockets:
        ports = []
        for _ in range(4):
            taken = sockets.enter_context(socket.socket())
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            ports.append(taken.getsockname()[1])
        yield ports


def test_ports_in_use_are_named_with_the_options_that_move_them(tmp_path, taken_ports):
    detector, trainer, detector_metrics, trainer_metrics = taken_ports
    settings = StackSettings(
        folder=DataFolder(tmp_path),
        ports=Ports(
            {"embedder": 0, "detector": detector, "trainer": trainer},
            {"embedder": 0, "detector": detector_metrics, "trainer": trainer_metrics},
        ),
    )
    with pytest.raises(StackInUse) as refused:
        check_ports(settings)
    assert str(refused.value) == (
        f"ports {detector}, {trainer}, {detector_metrics}, {trainer_metrics} are in use (another `oddity up`? "
        "stop it with Ctrl-C, or pass --detector-port, --trainer-port, --metrics-port-base; 0 picks a free one)"
    )


def test_the_folder_lock_names_its_holder_until_released(tmp_path):
    first = FolderLock(DataFolder(tmp_path))
    first.acquire()
    with pytest.raises(StackInUse) as refused:
        FolderLock(DataFolder(tmp_path)).acquire()
    assert str(refused.value) == (
        f"{tmp_path} is used by another `oddity up` (pid {os.getpid()}): stop it with Ctrl-C, "
        "or pass another --data-volume"
    )

    first.release()
    second = FolderLock(DataFolder(tmp_path))
    second.acquire()
    second.release()


@pytest.mark.slow
def test_the_demo_on_a_folder_in_use_exits_4_naming_the_holder(tmp_path, cli):
    held = FolderLock(DataFolder(tmp_path))
    held.acquire()
    try:
        result = invoke(cli, "demo", "--start", "--data-volume", tmp_path)
    finally:
        held.release()
    assert result.exit_code == IN_USE
    assert f"{tmp_path} is used by another `oddity up` (pid {os.getpid()})" in result.stderr
