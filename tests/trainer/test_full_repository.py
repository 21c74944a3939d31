"""Admin calls on a model repository that cannot be written: a full disk (a small tmpfs,
filled) answers RESOURCE_EXHAUSTED with the message training uses, leaves nothing half-written
and keeps what serves; a failed Rollback keeps the earlier rollback's hold."""

import errno
import subprocess
from pathlib import Path

import grpc
import pytest

from oddity.common import bundle
from oddity.v1 import trainer_pb2
from tests.conftest import start_trainer
from tests.support import datasets
from tests.trainer.test_operator_decisions import spec, status
from tests.trainer.test_robustness import run_job


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs as the model repository (mounting needs root, as CI has)."""
    mount = tmp_path / "models"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> None:
    """Write until the disk is full."""
    with (disk / "filler").open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


@pytest.mark.slow
def test_admin_calls_on_a_full_repository_say_so_and_change_nothing(data_volume, small_disk):
    datasets.write_dataset(data_volume, "full", spec(policy="manual"), {"a.csv": datasets.sensor_frame(400)})
    trainer = start_trainer(data_volume, small_disk, watch=False)
    try:
        assert run_job(trainer, "full").published_version == 1
        assert run_job(trainer, "full", force=True).published_version == 2
        rolled = trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="full", version=1))
        assert (rolled.version, status(trainer, "full").pinned_version) == (3, 3)
        fill(small_disk)

        full = f"cannot write to the model repository {small_disk}: No space left on device"
        for call in (
            lambda: trainer.stub.SetThreshold(trainer_pb2.SetThresholdRequest(dataset="full", percentile=99)),
            lambda: trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="full", version=2)),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert (refused.value.code(), refused.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, full)
        assert bundle.list_versions(small_disk / "full") == [1, 2, 3]
        assert sorted(p.name for p in (small_disk / "full").iterdir() if not p.name.isdigit()) == []
        # The earlier rollback's hold stands, and no threshold override was recorded.
        held = status(trainer, "full")
        assert (held.pinned_version, held.threshold_override) == (3, 0)
    finally:
        trainer.close()


@pytest.mark.slow
def test_a_rollback_to_a_version_that_is_not_kept_keeps_the_earlier_hold(data_volume, repository):
    datasets.write_dataset(data_volume, "kept", spec(policy="manual"), {"a.csv": datasets.sensor_frame(400)})
    trainer = start_trainer(data_volume, repository, watch=False)
    try:
        assert [run_job(trainer, "kept", force=True).published_version for _ in range(2)] == [1, 2]
        assert trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="kept", version=1)).version == 3
        before = status(trainer, "kept")
        with pytest.raises(grpc.RpcError) as refused:
            trainer.stub.Rollback(trainer_pb2.RollbackRequest(dataset="kept", version=42))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        after = status(trainer, "kept")
        assert (
            (after.pinned_version, after.pinned_until)
            == (before.pinned_version, before.pinned_until)
            == (
                3,
                "the data changes",
            )
        )
    finally:
        trainer.close()
