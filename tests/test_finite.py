"""Non-finite weights found as the source is hashed (`grow_cli.checkpoint.finite`): NaN and infinities of every
floating dtype by their exponent bits, the largest finite values let through, tensors cut by the hash's chunks at any
byte, and a remembered hash that vouches for the check."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from grow_cli.checkpoint import source
from grow_cli.checkpoint.dtypes import FLOATING, dtype_name
from grow_cli.checkpoint.finite import NON_FINITE_MASKS, FiniteScan
from grow_cli.checkpoint.header import read_safetensors_header
from grow_cli.checkpoint.source import file_sha256
from grow_cli.errors import CheckpointError

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GROW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(source, "RACY_SECONDS", -1.0)  # remember hashes of files written moments ago


def test_every_floating_dtype_has_its_bits():
    assert {dtype_name(d) for d in DTYPES} == set(FLOATING) == set(NON_FINITE_MASKS)


def _scan(path):
    return FiniteScan(path, read_safetensors_header(path, with_library=False)[0])


def _save(path, tensors):
    save_file(tensors, path)
    return path


def _odd_file(path, dtype, bad=None):
    """A safetensors file, written by hand, whose tensors lie at offsets that are no multiple of their element size
    (the library itself aligns them, but the format allows it): 7 bf16 values, then 1001 of `dtype` (three of them
    `bad`), then 13 float32."""
    values = torch.linspace(-3, 3, 1001, dtype=torch.float64).to(dtype)
    if bad is not None:
        values[[400, 401, 777]] = torch.tensor([bad] * 3, dtype=torch.float64).to(dtype)
    tensors = [("a.weight", torch.ones(7, dtype=torch.bfloat16)), ("b.weight", values), ("c.weight", torch.ones(13))]
    header, data = {}, b""
    for name, tensor in tensors:
        raw = tensor.view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": dtype_name(tensor.dtype),
            "shape": [tensor.numel()],
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_non_finite_values_are_found_wherever_the_chunks_cut(tmp_path, monkeypatch, dtype, chunk):
    """NaN (and infinity, where the format has one) is found and counted whatever the hash's chunk size, also where a
    chunk cuts an element of a tensor stored at an odd offset; the largest finite value is no false alarm."""
    monkeypatch.setattr(source, "HASH_CHUNK", chunk)
    largest = torch.finfo(dtype).max
    fine = _odd_file(tmp_path / "fine.safetensors", dtype, bad=largest)
    assert file_sha256(fine, scan=_scan(fine)) is not None
    has_inf = dtype not in (torch.float8_e4m3fn,)
    for bad in (float("nan"), *([float("-inf")] if has_inf else [])):
        path = _odd_file(tmp_path / "bad.safetensors", dtype, bad=bad)
        with pytest.raises(CheckpointError, match=r"bad.safetensors: tensor b.weight holds 3 NaN or infinite values"):
            file_sha256(path, scan=_scan(path))


def test_a_remembered_hash_vouches_for_the_check(tmp_path, monkeypatch):
    """A hash remembered without the check (an earlier grow's) does not skip it; a refused file is not remembered."""
    path = _save(tmp_path / "w.safetensors", {"w": torch.tensor([1.0, float("nan"), 2.0])})
    assert file_sha256(path) is not None  # remembered, unchecked
    with pytest.raises(CheckpointError, match="tensor w holds 1 NaN or infinite value:"):
        file_sha256(path, scan=_scan(path))
    with pytest.raises(CheckpointError):
        file_sha256(path, scan=_scan(path))  # still found: its hash was not remembered as checked


def test_an_in_memory_count_is_exact_across_its_chunks_and_holds_one_chunk(monkeypatch):
    """`non_finite_count` checks a chunk at a time: every NaN and infinity counted wherever the chunks cut, in a
    non-contiguous-shaped 2-D tensor too, and the check's temporaries are one chunk's, not the tensor's (torch's
    `isfinite` of a whole 113 MB moment held 191 MB more)."""
    from grow_cli.checkpoint import finite

    monkeypatch.setattr(finite, "CHECK_CHUNK", 7)
    x = torch.zeros(5, 9)
    x[0, 6], x[0, 7], x[3, 1], x[4, 8] = float("nan"), float("inf"), float("-inf"), float("nan")  # around the cuts
    assert finite.non_finite_count(x) == 4
    assert finite.non_finite_count(x.t()) == 4  # (a transposed view: copied, counted alike)
    assert finite.non_finite_count(torch.arange(10)) == 0

    monkeypatch.setattr(finite, "CHECK_CHUNK", 1 << 22)
    large = torch.zeros(1 << 26)  # 256 MB
    before = _peak_rss_from_now()
    assert finite.non_finite_count(large) == 0
    assert _peak_rss() - before < 64 << 20


def _peak_rss_from_now() -> int:
    """This process's resident memory now, with its peak reset to it (Linux: `clear_refs` 5), so that `_peak_rss`
    sees what comes after even in a pytest worker whose earlier tests peaked higher."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _peak_rss()


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith("VmHWM:"))
