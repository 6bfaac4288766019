"""The streaming reader and writer: HF-compatible files, exact bytes, safe loading of legacy .bin files."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_models import MODEL_CLASSES, build_tiny, probe_ids

from grow_cli.checkpoint.reader import CheckpointReader
from grow_cli.checkpoint.writer import PlannedTensor, ShardWriter, parse_size, plan_shards
from grow_cli.errors import CheckpointError, UsageError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec

DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}


def _write(folder, tensors, max_shard):
    planned = [PlannedTensor(n, tuple(t.shape), k) for n, (t, k) in tensors.items()]
    shards = plan_shards(planned, max_shard)
    writer = ShardWriter(folder, shards)
    for name, (tensor, _) in tensors.items():
        writer.write(name, tensor)
    return writer.finish(), shards


def test_writer_output_matches_safetensors(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": (torch.randn(7, 5, generator=gen), "F32"),
        "b.weight": (torch.randn(3, 3, generator=gen).to(torch.bfloat16), "BF16"),
        "c.scalar": (torch.tensor(3.5), "F32"),
        "d.ids": (torch.arange(11), "I64"),
        "e.half": (torch.randn(9, generator=gen).half(), "F16"),
    }
    index, shards = _write(tmp_path, tensors, max_shard=100)
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


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1000") == 1000
    with pytest.raises(UsageError):
        parse_size("five")


def test_reads_pytorch_bin_and_grows_it(tmp_path):
    model = build_tiny("llama")
    src = tmp_path / "bin-src"
    model.save_pretrained(src)  # safetensors …
    (src / "model.safetensors").unlink()  # … replaced by a legacy pickle
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    report = expand(str(src), tmp_path / "out", GrowthSpec(layers=6, depth_method="identity"), quiet=True)
    assert report["files"]["shards"] == 1
    grown = MODEL_CLASSES["llama"].from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(model(probe_ids()).logits, grown(probe_ids()).logits, atol=1e-5)


class Payload:
    """Anything that is not a tensor: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (print, ("this code must never run",))


def test_unsafe_pickle_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": Payload()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="Python objects besides tensors") as info:
        CheckpointReader(tmp_path)
    assert "weights_only=False" not in str(info.value)  # torch's advice, dangerous for exactly this file


def test_reader_rejects_offsets_that_do_not_match_dtype(tmp_path):
    save_file({"w": torch.ones(4)}, tmp_path / "model.safetensors")
    raw = (tmp_path / "model.safetensors").read_bytes().replace(b'"shape":[4]', b'"shape":[5]')
    (tmp_path / "model.safetensors").write_bytes(raw)
    with pytest.raises(CheckpointError, match="inconsistent offsets"):
        CheckpointReader(tmp_path)
