"""The checkpoint reader (`grow_cli.checkpoint.reader`): legacy PyTorch .bin files are read safely (and grown
exactly), pickles that are not plain tensors are refused, and safetensors headers whose offsets contradict their
dtype and shape are refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import MODEL_CLASSES, build_tiny, probe_ids

from grow_cli.checkpoint.reader import CheckpointReader
from grow_cli.errors import CheckpointError
from grow_cli.growth.expand import expand
from grow_cli.growth.spec import GrowthSpec


def test_reads_pytorch_bin_and_grows_it(tmp_path):
    model = build_tiny("llama")
    src = tmp_path / "bin-src"
    model.save_pretrained(src)  # safetensors …
    (src / "model.safetensors").unlink()  # … replaced by a legacy pickle
    torch.save(model.state_dict(), src / "pytorch_model.bin")
    report = expand(str(src), tmp_path / "out", GrowthSpec(layers=6, depth_method="identity"), quiet=True)
    assert len(report["files"]["shards"]) == 1
    grown = MODEL_CLASSES["llama"].from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(model(probe_ids()).logits, grown(probe_ids()).logits, atol=1e-5)


def _save_sharded_bin(model, folder):
    """`model` as transformers 4 saved a large one before safetensors: `pytorch_model-0000k-of-00002.bin` shards and
    their index, the tied head stored beside its embedding (in the other shard)."""
    model.save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    state = model.state_dict()
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2]}
    shards["pytorch_model-00002-of-00002.bin"] = names[len(names) // 2 :]
    for shard, held in shards.items():
        torch.save({name: state[name].clone() for name in held}, folder / shard)
    weight_map = {name: shard for shard, held in shards.items() for name in held}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def test_a_sharded_bin_checkpoint_grows_in_width_and_depth_into_bf16_safetensors_shards(cli, tmp_path):
    """An old fp32 checkpoint in `.bin` shards, grown in width and depth in one pass, converted to bf16, written in
    bounded safetensors shards and verified (docs/expand.md's --shard-size, --dtype and --verify on a .bin source):
    the output holds safetensors shards only, each within the bound, and loaded by transformers computes the
    source's logits up to bf16's rounding (measured 1.9e-3); the control, the same run with stack's copies, does not
    (measured 0.19)."""
    model = build_tiny("llama_tied")
    src = _save_sharded_bin(model, tmp_path / "bin-src")
    with torch.no_grad():
        reference = model(probe_ids()).logits
    gaps = {}
    for method in ("identity", "stack"):
        out = tmp_path / method
        args = ["--width-factor", "2", "--layers", "6", "--depth-method", method, "--dtype", "bf16"]
        result = cli("expand", src, out, *args, "--shard-size", "30KB", "--verify", "--json")
        assert result.code == 0, result.stderr
        check = json.loads(result.stdout)["verify"]
        exact = method == "identity"
        assert check["exact_claimed"] is exact and check["passed"] is (True if exact else None)
        files = sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".safetensors") or "index" in p.name)
        shards = [name for name in files if name.endswith(".safetensors")]
        assert files == [*shards, "model.safetensors.index.json"] and len(shards) > 1
        for shard in shards:
            tensors = load_file(out / shard).values()
            assert {t.dtype for t in tensors} == {torch.bfloat16}
            assert sum(t.numel() * t.element_size() for t in tensors) <= 30_000  # every tensor fits the bound
        grown = MODEL_CLASSES["llama_tied"].from_pretrained(out, dtype=torch.float32).eval()
        with torch.no_grad():
            gaps[method] = float((grown(probe_ids()).logits - reference).abs().max())
    assert gaps["identity"] < 1e-2 < 0.1 < gaps["stack"], gaps


class Payload:
    """Anything that is not a tensor: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (print, ("this code must never run",))


def test_a_bin_source_passes_one_tensor_at_a_time_through_memory_and_its_estimate_says_so(tmp_path, monkeypatch):
    """A `.bin` source's tensors cannot be copied file to file: each is read whole and written from memory. The
    reader fills the executor's reused buffer with it (a fresh copy per tensor, written in the background while the
    next was read, held two at once), and the plan's estimate, which `require_memory` refuses runs by, counts it and
    the direct-I/O staging it is written through: it said 8 MiB (the copy buffer of a safetensors source) where a
    depth growth of a 552 MB `.bin` Llama peaked 243 MB beyond torch's import (docs/benchmarks.md, Memory)."""
    from grow_cli.checkpoint.direct_io import STAGING_BYTES
    from grow_cli.growth import expand as executor

    src = _save_sharded_bin(build_tiny("llama"), tmp_path / "bin-src")
    seen = []
    real = CheckpointReader.read_stored

    def spy(self, name, pool=None, slot=None, rows=None):
        tensor = real(self, name, pool, slot, rows)
        seen.append(pool is not None and pool.owns(tensor.values))
        return tensor

    monkeypatch.setattr(CheckpointReader, "read_stored", spy)
    spec = GrowthSpec(layers=6, depth_method="stack")
    plan = executor.expand(str(src), None, spec, dry_run=True)
    largest = max(math.prod(t["shape"]) * 4 for t in plan["tensors"])  # fp32, as stored
    assert plan["estimated_peak_memory_bytes"] >= largest + STAGING_BYTES
    executor.expand(str(src), tmp_path / "out", spec, quiet=True)
    assert seen and all(seen)


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


def test_config_dtype_names_are_torchs_without_importing_torch():
    """config.json's `dtype` is checked against a table (so reading a config costs no torch import): the table holds
    every dtype name of the installed torch, and is exactly torch 2.15's (older releases lack a few: int1 before
    2.13, bcomplex32 before 2.15)."""
    from grow_cli.checkpoint.dtypes import TORCH_DTYPE_NAMES

    names = {n for n in dir(torch) if isinstance(getattr(torch, n, None), torch.dtype)}
    assert names <= TORCH_DTYPE_NAMES
    if torch.__version__ >= "2.13":  # a TorchVersion: compares as a version
        assert TORCH_DTYPE_NAMES - names == ({"bcomplex32"} if torch.__version__ < "2.15" else set())


@pytest.mark.parametrize("dry_run", [False, True])
def test_expand_publishes_nothing_the_safetensors_library_refuses(tiny_checkpoints, tmp_path, monkeypatch, dry_run):
    """expand lets the library's own header parse run beside the writes; its refusal still stops the run before
    anything is published (here the library is made to refuse a file grow's parser accepts)."""
    from grow_cli.checkpoint import reader as reader_module

    def refuse(path):
        raise CheckpointError(f"{path.name} is not a valid safetensors file (safetensors: refused in this test)")

    monkeypatch.setattr(reader_module, "library_check", refuse)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="refused in this test"):
        expand(str(tiny_checkpoints("llama")), out, GrowthSpec(layers=6), quiet=True, dry_run=dry_run)
    assert list(tmp_path.iterdir()) == []  # no output, no temporary folder


def _sharded(folder, shards: dict[str, dict[str, torch.Tensor]], weight_map: dict[str, str]) -> None:
    """A folder of safetensors `shards` ({file: tensors}) and an index with `weight_map`, as written, however wrong."""
    import json

    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for name, tensors in shards.items():
        save_file(tensors, folder / name, metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_a_tensor_stored_in_two_shards_is_refused(tmp_path):
    """transformers loads every tensor of every shard the index lists, the later shard's copy last: a name stored
    twice is the value transformers loads, not necessarily the one the index names. grow refuses the ambiguity."""
    _sharded(
        tmp_path / "src",
        {"model-1.safetensors": {"w": torch.zeros(2)}, "model-2.safetensors": {"w": torch.ones(2), "v": torch.ones(1)}},
        {"w": "model-1.safetensors", "v": "model-2.safetensors"},
    )
    with pytest.raises(CheckpointError, match="'w' is stored in both model-1.safetensors and model-2.safetensors"):
        CheckpointReader(tmp_path / "src")


def test_a_tensor_the_index_leaves_out_is_read_as_transformers_reads_it(tmp_path):
    """A tensor in a listed shard that the index does not name is loaded by transformers all the same (the index
    only lists the shards to open), so grow reads it too, instead of calling it missing."""
    _sharded(
        tmp_path / "src",
        {"model-1.safetensors": {"w": torch.zeros(2)}, "model-2.safetensors": {"v": torch.ones(1), "u": torch.ones(3)}},
        {"w": "model-1.safetensors", "v": "model-2.safetensors"},
    )
    reader = CheckpointReader(tmp_path / "src")
    assert sorted(reader.tensors) == ["u", "v", "w"] and torch.equal(reader.read("u"), torch.ones(3))


def test_a_tensor_the_index_places_in_the_wrong_shard_is_read_from_the_one_that_holds_it(tmp_path):
    """transformers loads `w` and `v` from the shards that store them, whichever listed shards the index names (a
    hand-edited or re-sharded index): grow reads them the same, and a name no listed shard stores (a shard lost or
    replaced by another save's; transformers leaves it at random values) is refused, naming the index, the tensor and
    what to do. grow refused the first, and took a .bin index's second for a tensor the architecture lacks."""
    shards = {"model-1.safetensors": {"w": torch.zeros(2)}, "model-2.safetensors": {"v": torch.ones(1)}}
    _sharded(tmp_path / "src", shards, {"w": "model-2.safetensors", "v": "model-1.safetensors"})
    reader = CheckpointReader(tmp_path / "src")
    assert sorted(reader.tensors) == ["v", "w"] and torch.equal(reader.read("w"), torch.zeros(2))
    _sharded(
        tmp_path / "lost", shards, {"w": "model-1.safetensors", "v": "model-2.safetensors", "u": "model-1.safetensors"}
    )
    refusal = "model.safetensors.index.json lists tensor u in model-1.safetensors, but no shard it names holds it"
    with pytest.raises(CheckpointError, match=f"{refusal}.*download the checkpoint again"):
        CheckpointReader(tmp_path / "lost")
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    torch.save({"w": torch.zeros(2)}, bin_folder / "pytorch_model-00001-of-00001.bin")
    index = {
        "metadata": {},
        "weight_map": {"w": "pytorch_model-00001-of-00001.bin", "u": "pytorch_model-00001-of-00001.bin"},
    }
    (bin_folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="pytorch_model.bin.index.json lists tensor u in pytorch_model-00001"):
        CheckpointReader(bin_folder)


def test_a_shard_the_index_leaves_out_is_refused_and_other_safetensors_files_are_not_read(tmp_path):
    """A shard of the index's set that the index does not name is left out by transformers, tensors and all: grow
    names the tensors the index does not list. Files of no shard set (Mistral's consolidated.safetensors, whose names
    are not transformers') and shards of another set (a stale save) are no part of the model and are not read."""
    import json

    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    shards = {
        first: {"w": torch.zeros(2)},
        second: {"v": torch.ones(1), "u": torch.ones(3)},
        "consolidated.safetensors": {"layers.0.attention.wq.weight": torch.ones(2)},
        "model-00001-of-00003.safetensors": {"stale": torch.ones(2)},
    }
    _sharded(tmp_path / "src", shards, {"w": first})
    refusal = rf"does not list tensor [uv] \(and 1 other tensor\), which shard {second} stores.*re-create the index"
    with pytest.raises(CheckpointError, match=refusal):
        CheckpointReader(tmp_path / "src")
    index = tmp_path / "src" / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"w": first, "v": second}}))
    assert sorted(CheckpointReader(tmp_path / "src").tensors) == ["u", "v", "w"]


def test_a_bin_shard_the_index_leaves_out_is_refused_as_a_safetensors_one_is(tmp_path):
    """The same holds for `pytorch_model-0000k-of-0000N.bin` shards and their index: a shard of the set that the
    index does not name is left out by transformers, so the tensors in it are named; shards of another set are not
    read."""
    import json

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    first, second = "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"
    torch.save({"w": torch.zeros(2)}, src / first)
    torch.save({"v": torch.ones(1), "u": torch.ones(3)}, src / second)
    torch.save({"stale": torch.ones(2)}, src / "pytorch_model-00001-of-00003.bin")
    index = src / "pytorch_model.bin.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"w": first}}))
    refusal = rf"pytorch_model.bin.index.json does not list tensor [uv] \(and 1 other tensor\), which shard {second}"
    with pytest.raises(CheckpointError, match=refusal):
        CheckpointReader(src)
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"w": first, "v": second}}))
    assert sorted(CheckpointReader(src).tensors) == ["u", "v", "w"]


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_legacy_layernorm_names_are_read_as_transformers_loads_them(tmp_path, weights):
    """The original BERT checkpoints on the Hub (bert-base-uncased and its siblings) store LayerNorm's gain and bias
    as TensorFlow's `gamma` and `beta`, which transformers renames as it loads. grow reads them under the loaded
    names: the source is described and grown exactly (checked against transformers' own loading of it), and the
    output stores today's names."""
    model = build_tiny("bert")
    src = tmp_path / "legacy"
    model.save_pretrained(src)
    saved = load_file(src / "model.safetensors")
    (src / "model.safetensors").unlink()
    legacy = {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): tensor
        for name, tensor in saved.items()
    }
    assert sum(name.endswith("LayerNorm.gamma") for name in legacy) > 2
    if weights.endswith(".bin"):
        torch.save(legacy, src / weights)
    else:
        save_file(legacy, src / weights, metadata={"format": "pt"})
    with CheckpointReader(src) as reader:
        assert set(reader.tensors) == set(saved)
        gain = reader.read("bert.embeddings.LayerNorm.weight")
        torch.testing.assert_close(gain, model.bert.embeddings.LayerNorm.weight, rtol=0, atol=0)
    spec = GrowthSpec(width_factor=2, width_method="fpi")
    report = expand(str(src), tmp_path / "wide", spec, quiet=True, verify=True)
    assert report["verify"]["passed"] is True
    with CheckpointReader(tmp_path / "wide") as grown:
        assert not any(name.endswith(("gamma", "beta")) for name in grown.tensors)


def test_a_tensor_stored_under_its_legacy_and_its_loaded_name_is_refused(tmp_path):
    """Both `LayerNorm.gamma` and `LayerNorm.weight`: two copies of one tensor, which may differ."""
    (tmp_path / "config.json").write_text("{}")
    save_file({"a.LayerNorm.gamma": torch.ones(2), "a.LayerNorm.weight": torch.ones(2)}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="holds both a.LayerNorm.weight and a.LayerNorm.gamma"):
        CheckpointReader(tmp_path)


def test_a_run_that_ends_while_the_header_check_runs_waits_for_it(tiny_checkpoints, tmp_path):
    """The safetensors library's parse of the headers runs in the background, inside its native code (which imports
    numpy: Python code, a tenth of a second). A run interrupted before the reader could be closed (between the check's
    start and the `with` around the reader) exited meanwhile, and the interpreter tore the thread down inside that
    native code: the process aborted ("FATAL: exception not rethrown", exit -6). The check is now finished first."""
    slow_numpy, inside = tmp_path / "numpy", tmp_path / "inside"
    slow_numpy.mkdir()
    (slow_numpy / "__init__.py").write_text(  # busy in Python code for a second, as numpy's import is for 0.1 s
        f"open({str(inside)!r}, 'w').close()\n"
        "import time\nstart = time.monotonic()\nwhile time.monotonic() - start < 1:\n    pass\n"
    )
    program = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(tmp_path)!r})
        from grow_cli.checkpoint.reader import CheckpointReader
        CheckpointReader({str(tiny_checkpoints("llama"))!r}, library_check_later=True)
        while not os.path.exists({str(inside)!r}):  # the check is inside safetensors' native code
            time.sleep(0.01)
        sys.exit(130)  # as an interrupted run does, the reader never closed
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
