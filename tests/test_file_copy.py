"""Copying byte ranges file to file (`grow_cli.checkpoint.file_copy`): in the kernel, and through the buffered
fallback wherever the kernel refuses — forced here, and for real across filesystems where the kernel says EXDEV."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from grow_cli.checkpoint import file_copy
from grow_cli.checkpoint.file_copy import FileRange, RangeCopier
from grow_cli.errors import CheckpointError

SIZE = 3 * file_copy.CHUNK + 12345  # several buffer-fulls and a ragged end


def _copy(src: Path, dst: Path, offset: int, nbytes: int, at: int, copier: RangeCopier | None = None):
    copier = copier or RangeCopier()
    with open(src, "rb") as s, open(dst, "r+b" if dst.exists() else "w+b") as d:
        copier.copy(FileRange(s.fileno(), offset, nbytes, src.name), d.fileno(), at)
    return copier


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "source.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def test_kernel_copy_is_byte_identical(source, tmp_path):
    dst = tmp_path / "out.bin"
    copier = _copy(source, dst, 1000, SIZE - 2000, 7)
    data = source.read_bytes()
    assert dst.read_bytes() == b"\0" * 7 + data[1000 : SIZE - 1000]
    if hasattr(os, "copy_file_range"):
        assert copier.kernel_bytes == SIZE - 2000 and copier.buffered_bytes == 0


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM])
def test_refused_kernel_copy_falls_back_and_stays_off(source, tmp_path, monkeypatch, refusal):
    def refuse(*args):
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    dst = tmp_path / "out.bin"
    copier = _copy(source, dst, 0, SIZE, 0)
    assert dst.read_bytes() == source.read_bytes()
    assert not copier.kernel and copier.buffered_bytes == SIZE
    _copy(source, dst, 5, 10, 0, copier)  # not asked again
    assert copier.buffered_bytes == SIZE + 10


def test_a_kernel_that_stops_short_is_finished_by_the_buffer(source, tmp_path, monkeypatch):
    real = os.copy_file_range

    def short(src, dst, count, offset_src, offset_dst):  # 4 KiB, then nothing more (as some filesystems answer)
        return real(src, dst, min(count, 4096), offset_src, offset_dst) if offset_src < 4096 else 0

    monkeypatch.setattr(os, "copy_file_range", short)
    dst = tmp_path / "out.bin"
    copier = _copy(source, dst, 0, SIZE, 0)
    assert dst.read_bytes() == source.read_bytes()
    assert copier.kernel_bytes == 4096 and copier.buffered_bytes == SIZE - 4096


def test_without_copy_file_range_the_buffer_copies(source, tmp_path, monkeypatch):
    monkeypatch.delattr(os, "copy_file_range", raising=False)
    dst = tmp_path / "out.bin"
    copier = _copy(source, dst, 0, SIZE, 0)
    assert dst.read_bytes() == source.read_bytes() and copier.buffered_bytes == SIZE


def test_a_real_io_error_is_not_taken_for_a_refusal(source, tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "copy_file_range", fail, raising=False)
    with pytest.raises(OSError, match="Input/output"):
        _copy(source, tmp_path / "out.bin", 0, SIZE, 0)


@pytest.mark.parametrize("kernel", [True, False])
def test_a_range_beyond_the_end_of_the_source_is_a_truncated_checkpoint(source, tmp_path, monkeypatch, kernel):
    if not kernel:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    with pytest.raises(CheckpointError, match="source.bin is truncated"):
        _copy(source, tmp_path / "out.bin", SIZE - 100, 200, 0)


def test_across_filesystems(source, tmp_path):
    """tmpfs → the test folder: recent kernels refuse this copy (EXDEV) and the buffer copies; either way, the
    bytes are the source's."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test folder")
    dst = shm / f"grow-test-{os.getpid()}.bin"
    try:
        copier = _copy(source, dst, 0, SIZE, 0)
        assert dst.read_bytes() == source.read_bytes()
        assert copier.kernel_bytes + copier.buffered_bytes == SIZE
    finally:
        dst.unlink(missing_ok=True)
