"""`checkpoint/mapped.py`: the pages of a memory-mapped tensor are given back once it is used, so streaming a
`torch.load(mmap=True)` file keeps one tensor resident, not the file. Resident bytes are read from the kernel's own
accounting of the mapping (/proc/self/smaps), which does not depend on timing or on other processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from grow_cli.checkpoint.mapped import mapped_file, release
from grow_cli.checkpoint.reader import CheckpointReader

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/smaps: Linux")
MB = 1 << 20


def resident(path: Path) -> int:
    """Bytes of `path` resident in this process's mappings of it."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) == 6 and Path(fields[5]) == path
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


def test_release_drops_a_mapped_tensors_pages_and_keeps_its_values(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"a": torch.randn(MB // 4), "b": torch.randn(MB // 4)}, path)  # 1 MB each
    state = torch.load(path, mmap=True, weights_only=True)
    expected = state["a"].clone()  # touches every page of "a"
    assert resident(path) >= MB
    release(state["a"])
    assert resident(path) < MB // 4
    assert torch.equal(state["a"], expected)  # read again: faulted back in from the file


def test_release_leaves_memory_of_its_own_alone():
    own = torch.arange(MB, dtype=torch.float32)
    storage = own.untyped_storage()
    assert mapped_file(storage.data_ptr(), storage.data_ptr() + storage.nbytes()) is None
    release(own)
    assert torch.equal(own, torch.arange(MB, dtype=torch.float32))  # anonymous pages would have been zeroed


def test_reading_a_zip_bin_checkpoint_keeps_one_tensor_resident(tmp_path):
    """The reader memory-maps a zip-format pytorch_model.bin; reading all of it must not leave the file resident."""
    (tmp_path / "config.json").write_text("{}")
    path = tmp_path / "pytorch_model.bin"
    tensors = {f"w{i}": torch.full((MB // 4,), float(i)) for i in range(8)}  # 8 × 1 MB
    torch.save(tensors, path)
    most = 0
    with CheckpointReader(tmp_path) as reader:
        for name, expected in tensors.items():
            assert torch.equal(reader.read(name), expected)
            most = max(most, resident(path))
    assert most < 2 * MB  # one tensor (plus pages shared with its neighbours), not the 8 MB file
