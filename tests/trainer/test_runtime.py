"""What the trainer sets once per process: torch's thread count (not per job), and bounded
caches on the objects that own them (file digests on the datasets, datasets.py)."""

import os

import torch

from oddity.trainer import runtime
from oddity.trainer.data import FileDigests, file_digest


def test_torch_threads_are_set_for_the_process():
    before = torch.get_num_threads()
    try:
        assert runtime.set_torch_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert runtime.set_torch_threads(0) == runtime.usable_cores()
        assert torch.get_num_threads() == runtime.usable_cores()
    finally:
        torch.set_num_threads(before)


def _rewrite_keeping_size_and_mtime(path, content: bytes) -> None:
    stat = path.stat()
    path.write_bytes(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_file_digests_remember_unchanged_files_and_forget_the_least_recent(tmp_path):
    a, b, c = (tmp_path / name for name in ("a", "b", "c"))
    for path in (a, b, c):
        path.write_bytes(path.name.encode() * 10)
    first_a, first_b = file_digest(a), file_digest(b)
    digests = FileDigests(limit=2)
    assert digests.digest(a) == first_a
    assert digests.digest(b) == first_b
    digests.digest(a)  # a is the most recent now: b goes when c comes
    digests.digest(c)
    assert len(digests) == 2

    # A remembered file with the same size and mtime is not read again; a forgotten one is.
    _rewrite_keeping_size_and_mtime(a, b"z" * 10)
    _rewrite_keeping_size_and_mtime(b, b"y" * 10)
    assert digests.digest(a) == first_a
    assert digests.digest(b) == file_digest(b) != first_b
    # A changed size is a changed file.
    a.write_bytes(b"longer content")
    assert digests.digest(a) == file_digest(a)
