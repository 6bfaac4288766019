"""The streaming shard writer (`grow_cli.checkpoint.writer`): HF-compatible files and index, exact bytes read back
with safetensors and with grow's reader, shard planning within the size limit, and size parsing."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from grow_cli.checkpoint.arrays import stored
from grow_cli.checkpoint.reader import CheckpointReader
from grow_cli.checkpoint.writer import PlannedTensor, ShardWriter, plan_shards


def _write(folder, tensors, max_shard, *, direct=True):
    planned = [PlannedTensor(n, tuple(t.shape), k) for n, (t, k) in tensors.items()]
    shards = plan_shards(planned, max_shard)
    writer = ShardWriter(folder, shards, direct=direct)
    for name, (tensor, _) in tensors.items():
        writer.write(name, stored(tensor))
    return writer.finish(), shards


@pytest.mark.parametrize("direct", [True, False], ids=["direct-io", "page-cache"])
def test_writer_output_matches_safetensors(tmp_path, direct):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": (torch.randn(7, 5, generator=gen), "F32"),
        "b.weight": (torch.randn(3, 3, generator=gen).to(torch.bfloat16), "BF16"),
        "c.scalar": (torch.tensor(3.5), "F32"),
        "d.ids": (torch.arange(11), "I64"),
        "e.half": (torch.randn(9, generator=gen).half(), "F16"),
    }
    index, shards = _write(tmp_path, tensors, max_shard=100, direct=direct)
    assert len(shards) > 1
    on_disk = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert on_disk == index and on_disk["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t, _ in tensors.values()
    )
    for name, (tensor, _) in tensors.items():
        with safe_open(tmp_path / index["weight_map"][name], "pt") as f:
            assert f.metadata() == {"format": "pt"}
            assert torch.equal(f.get_tensor(name), tensor)
    reader = CheckpointReader(tmp_path)
    for name, (tensor, _) in tensors.items():
        assert torch.equal(reader.read(name), tensor)


def test_single_shard_is_model_safetensors_without_index(tmp_path):
    _write(tmp_path, {"x": (torch.ones(4), "F32")}, max_shard=10**9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=30), max_shard=st.integers(4, 400))
def test_plan_shards_respects_the_limit(sizes, max_shard):
    planned = [PlannedTensor(f"t{i}", (n,), "F32") for i, n in enumerate(sizes)]
    shards = plan_shards(planned, max_shard)
    assert [t for s in shards for t in s] == planned  # order kept, nothing lost
    for shard in shards:
        assert sum(t.nbytes for t in shard) <= max_shard or len(shard) == 1


def test_writeback_starts_as_bytes_are_written(tmp_path, monkeypatch):
    """Every byte of a shard has its writeback started once, in order, while the shard is written — from a
    background thread (`durable.Writeback`), so the copying thread never waits for the disk's queue."""
    import sys
    import threading

    import pytest

    from grow_cli.checkpoint import durable, writer

    if sys.platform == "linux":
        assert durable._sync_file_range is not None  # the head start is real here
    else:
        pytest.skip("sync_file_range is Linux's")
    started: list[tuple[int, int, str]] = []
    monkeypatch.setattr(writer, "WRITEBACK_STEP", 1000)
    monkeypatch.setattr(
        durable, "start_writeback", lambda fd, offset, n: started.append((offset, n, threading.current_thread().name))
    )
    tensors = {"a": (torch.randn(700), "F32"), "b": (torch.randn(300), "F32")}
    _write(tmp_path, tensors, max_shard=10**9, direct=False)
    size = (tmp_path / "model.safetensors").stat().st_size
    assert len(started) > 2 and started[0][0] == 0 and {name for *_, name in started} == {"grow-writeback"}
    assert all(a + n == b for (a, n, _), (b, _, _) in zip(started, started[1:], strict=False))
    assert sum(n for _, n, _ in started) == size


def test_copied_tensors_keep_their_place_within_a_page(tmp_path):
    """The header is padded so that copied tensors start at the same offset within a page as in their source (the
    kernel copies such ranges faster), and the file stays a valid safetensors file."""
    from grow_cli.checkpoint.writer import PAGE

    tensors = {"a.weight": (torch.randn(64, 32), "F32"), "b.weight": (torch.randn(32), "F32")}
    planned = [PlannedTensor(n, tuple(t.shape), k) for n, (t, k) in tensors.items()]
    writer = ShardWriter(tmp_path, plan_shards(planned, 10**9), source_offsets={"a.weight": 3 * PAGE + 200 * 8})
    for name, (tensor, _) in tensors.items():
        writer.write(name, stored(tensor))
    writer.finish()
    reader = CheckpointReader(tmp_path)
    assert reader.tensors["a.weight"].start % PAGE == 200 * 8
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert all(torch.equal(f.get_tensor(n), t) for n, (t, _) in tensors.items())


def test_outputs_are_fsynced_before_they_appear(cli, tiny_checkpoints, tmp_path, monkeypatch):
    """Every file of the output, its folder and the folder it is renamed into are fsynced (Linux: named by fd)."""
    import os
    import sys

    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("names the fsynced files through /proc/self/fd")
    synced: list[str] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    out = tmp_path / "out"
    assert cli("expand", tiny_checkpoints("llama"), out, "--layers", "6", "-q").code == 0
    names = {os.path.basename(p) for p in synced}
    assert {p.name for p in out.iterdir()} <= names
    assert str(tmp_path) in synced  # the rename is recorded


def _direct_io_here(folder) -> bool:
    from grow_cli.checkpoint.direct_io import Staging, open_direct

    with Staging() as staging:
        appender = open_direct(folder / "probe", staging)
        if appender is None:
            return False
        appender.close()
    (folder / "probe").unlink()
    return True


def test_direct_io_writes_exact_bytes_across_staging_buffers(tmp_path, monkeypatch):
    """Computed shards go to the disk with O_DIRECT through small staging buffers taken in turn: tensors that
    straddle buffers, a tail shorter than a block and shards of odd lengths come back exact (read with
    safetensors), and each file has its true length (the padded last block is cut off)."""
    import os

    from grow_cli.checkpoint import direct_io

    if not _direct_io_here(tmp_path):
        pytest.skip("this filesystem has no direct I/O")
    monkeypatch.setattr(direct_io, "STAGE", direct_io.ALIGN)  # a shard fills the buffers about twice over
    opened = []
    real_open = direct_io.open_direct
    monkeypatch.setattr(direct_io, "open_direct", lambda *args: opened.append(real_open(*args)) or opened[-1])
    monkeypatch.setattr("grow_cli.checkpoint.writer.open_direct", direct_io.open_direct)
    gen = torch.Generator().manual_seed(1)
    tensors = {f"t{i}": (torch.randn(n, generator=gen), "F32") for i, n in enumerate([5000, 1, 7777, 3072, 13])}
    index, shards = _write(tmp_path, tensors, max_shard=40_000)
    assert len(shards) == 3 and len(opened) == 3 and all(a is not None for a in opened)
    for shard_file in set(index["weight_map"].values()):
        with open(tmp_path / shard_file, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
        data = sum(t.nbytes for shard in shards for t in shard if index["weight_map"][t.name] == shard_file)
        assert os.path.getsize(tmp_path / shard_file) == 8 + header_len + data
    for name, (tensor, _) in tensors.items():
        with safe_open(tmp_path / index["weight_map"][name], "pt") as f:
            assert torch.equal(f.get_tensor(name), tensor)


@pytest.mark.parametrize("refused_at", ["open", "first write"])
def test_without_direct_io_the_page_cache_writes_the_same_bytes(tmp_path, monkeypatch, refused_at):
    """Where the filesystem refuses O_DIRECT (tmpfs, some network and FUSE filesystems), at open or at the first
    write, the shard is written through the page cache instead: same bytes, no error, nothing left of the attempt."""
    import errno
    import os

    real_open, real_pwrite = os.open, os.pwrite
    direct_fds: set[int] = set()
    tried: list[str] = []

    def open_(path, flags, *args):
        if flags & os.O_DIRECT:
            tried.append(os.path.basename(path))
        if flags & os.O_DIRECT and refused_at == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def pwrite(fd, data, offset):
        if fd in direct_fds:
            direct_fds.discard(fd)  # the number is reused by the page-cache descriptor that follows
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "pwrite", pwrite)
    tensors = {"a": (torch.randn(1000), "F32"), "b": (torch.arange(7), "I64")}
    _write(tmp_path, tensors, max_shard=10**9)
    assert tried == ["model.safetensors"]  # direct I/O was tried, and refused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert all(torch.equal(f.get_tensor(n), t) for n, (t, _) in tensors.items())


def test_a_copied_tensor_must_be_named_in_source_offsets(tmp_path):
    """A shard is written with direct I/O when the plan copies nothing into it, so a copy the plan did not name
    (in `source_offsets`) is refused rather than written past the staging buffers."""
    from grow_cli.checkpoint.file_copy import FileRange

    (tmp_path / "src").write_bytes(bytes(16))
    writer = ShardWriter(tmp_path, plan_shards([PlannedTensor("a", (4,), "F32")], 10**9))
    with open(tmp_path / "src", "rb") as f, pytest.raises(AssertionError, match="source_offsets"):
        writer.write("a", FileRange(f.fileno(), 0, 16, "src"))


def test_a_failed_direct_write_is_raised_once_and_a_discarding_close_still_closes(tmp_path, monkeypatch):
    """A write that fails in the appender's thread (a full disk) is raised by the next append that needs its buffer
    (once every staging buffer is taken); the close that follows a failure (`discard`) neither raises it again nor
    leaks the descriptor."""
    import errno
    import os

    from grow_cli.checkpoint import direct_io

    if not _direct_io_here(tmp_path):
        pytest.skip("this filesystem has no direct I/O")
    monkeypatch.setattr(direct_io, "STAGE", direct_io.ALIGN)
    stagings = [direct_io.Staging(), direct_io.Staging()]
    raised, in_flight = (direct_io.open_direct(tmp_path / n, s) for n, s in zip("ab", stagings, strict=True))
    assert raised is not None and in_flight is not None

    def full_disk(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_io, "_write_all", full_disk)
    with pytest.raises(OSError, match="No space left"):
        raised.append(memoryview(bytes(direct_io.BUFFERS * direct_io.ALIGN)))
    in_flight.append(memoryview(bytes(direct_io.ALIGN)))  # one full buffer: its write fails in the thread
    for appender in (raised, in_flight):
        fd = appender.fd
        appender.close(discard=True)
        with pytest.raises(OSError):
            os.fstat(fd)  # closed
    for staging in stagings:
        staging.close()
