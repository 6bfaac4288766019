"""`grow expand` through the CLI: `--dry-run` plans without writing, `--json` reports, and the output folder holds
the model, its small files, grow.json with the lineage inherited from the source, and the model card."""

from __future__ import annotations

import json
import math

import pytest


def test_dry_run_writes_nothing_and_lists_every_tensor(cli, tiny_checkpoints, tmp_path):
    result = cli(
        "expand",
        tiny_checkpoints("llama"),
        tmp_path / "out",
        "--layers",
        "6",
        "--depth-method",
        "identity",
        "--dry-run",
        "--json",
    )
    assert result.code == 0, result.stderr
    plan = json.loads(result.stdout)
    assert not (tmp_path / "out").exists()
    assert plan["target"]["layers"] == 6 and plan["target_config"]["num_hidden_layers"] == 6
    assert plan["depth"]["layer_map"] == [0, 1, 1, 2, 3, 3]
    zeros = [t["name"] for t in plan["tensors"] if t["from"].startswith("zeros")]
    assert sorted(zeros) == sorted(
        f"model.layers.{j}.{p}.weight" for j in (2, 5) for p in ("self_attn.o_proj", "mlp.down_proj")
    )
    assert plan["estimated_peak_memory_bytes"] > 0 and plan["files"]["bytes"] > 0
    human = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "6", "--dry-run")
    assert "plan" in human.stdout and not (tmp_path / "out").exists()
    assert " in 1 shard; estimated peak memory " in human.stdout
    source_params = plan["source"]["shape"]["num_parameters"]  # a tiny count reads in K, where it read "0.0M params"
    assert source_params < 1e5 and f", {source_params / 1e3:.3g}K params\n" in human.stdout, human.stdout
    # The table shows the first and last 20 tensors, and marks where it leaves the others out (it showed them back
    # to back and said so below the table); each row is one line naming its tensor and source whole, where at 80
    # columns (a pipe's width) rich cut them ("model.layers.0.input_layer…") and wrapped the source onto a second line.
    names = [t["name"] for t in plan["tensors"]]
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in human.stdout.splitlines() if line[:1] == "│"]
    marker = next(i for i, row in enumerate(rows) if row[0].startswith(f"… {len(names) - 40} more tensors"))
    shown = [row[0] for row in rows if row[0].startswith(("model.", "lm_head"))]
    assert shown == names[:20] + names[-20:] and len(rows) == 41 and marker == 20, human.stdout
    assert all(row[3] == f"copy {row[0]}" for row in rows[:20]), human.stdout  # (stacked: the first layers' own)


def test_expand_json_report_and_outputs(cli, tiny_checkpoints, tmp_path):
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "8", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["target"]["layers"] == 8
    out = tmp_path / "out"
    record = json.loads((out / "grow.json").read_text())
    stage = record["stages"][-1]
    assert stage["kind"] == "expand" and stage["depth"]["method"] == "stack"
    assert stage["source"]["files"] and all(len(v["sha256"]) == 64 for v in stage["source"]["files"].values())
    assert stage["added_tensors"] and all(n.startswith("model.layers.") for n in stage["added_tensors"])
    assert (out / "tokenizer_config.json").read_bytes() == (
        tiny_checkpoints("llama") / "tokenizer_config.json"
    ).read_bytes()
    assert (out / "generation_config.json").exists()
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "base_model_relation" not in card.split("---")[1]  # local source
    assert "library_name: transformers" in card and "- grow" in card and "- stack" in card
    assert record["model"]["tokenizer"] and 'tokenizer = AutoTokenizer.from_pretrained("out")' in card


def test_the_card_of_a_model_grown_without_a_tokenizer_loads_none(cli, tiny_copy, tmp_path):
    """A source folder without tokenizer files grows into a folder without them: its card's usage snippet loaded a
    tokenizer from it all the same, which fails for whoever copies it."""
    source = tiny_copy("llama")
    for name in ("tokenizer_config.json", "tokenizer.json"):
        (source / name).unlink(missing_ok=True)
    assert cli("expand", source, tmp_path / "out", "--layers", "8").code == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert json.loads((tmp_path / "out" / "grow.json").read_text())["model"]["tokenizer"] is False
    assert "AutoTokenizer" not in card and 'AutoModelForCausalLM.from_pretrained("out")' in card, card
    assert "# this folder holds no tokenizer" in card


@pytest.mark.parametrize("quiet", [False, True])
def test_json_keeps_the_progress_on_stderr(cli, tiny_checkpoints, tmp_path, monkeypatch, quiet):
    """`--json` writes one document on stdout and, as train-stage does, leaves the progress bar on stderr (a long
    expand was silent with it); only --quiet hides it."""
    import io

    from rich.console import Console

    import grow_cli.console as console

    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    monkeypatch.setattr(console, "err", terminal)
    args = ("-q",) if quiet else ()
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "6", "--json", *args)
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["target"]["layers"] == 6  # the whole of stdout is one JSON document
    assert ("growing" in terminal.file.getvalue()) is not quiet


def test_lineage_is_inherited(cli, tiny_checkpoints, tmp_path):
    assert cli("expand", tiny_checkpoints("llama"), tmp_path / "a", "--layers", "6", "-q").code == 0
    assert cli("expand", tmp_path / "a", tmp_path / "b", "--layers", "12", "-q").code == 0
    record = json.loads((tmp_path / "b" / "grow.json").read_text())
    assert [s["target"]["layers"] for s in record["stages"]] == [6, 12]


def test_a_trained_source_gives_its_model_files_not_its_run(cli, tiny_copy, tmp_path):
    """A `grow train-stage` output is a model folder plus the record of its run (metrics.jsonl, checkpoints/):
    the grown model gets the tokenizer and configs, never the run's metrics or resumable checkpoints, which would
    charge the grown model the source's tokens and offer `--resume auto` a state of another model."""
    src = tiny_copy("llama")
    (src / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0, "tokens": 1024}\n')
    (src / "checkpoints" / "step_00000001").mkdir(parents=True)
    (src / "checkpoints" / "step_00000001" / "grow-state.json").write_text("{}")
    result = cli("expand", src, tmp_path / "out", "--layers", "6", "-q")
    assert result.code == 0, result.stderr
    out = tmp_path / "out"
    assert (out / "tokenizer_config.json").is_file()
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


# What `hf download --local-dir` leaves besides the model: git's and the client's hidden files, the same weights in
# other formats (in sub-folders too; ONNX keeps large weights in a `.onnx_data` file beside the graph), a large file.
WHOLE_REPO_EXTRAS = {
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    ".cache/huggingface/download/config.json.metadata": b"0123abcd\netag\n1764000000.0\n",
    "pytorch_model.bin": b"the same weights, pickled",
    "tf_model.h5": b"the same weights, for Keras",
    "onnx/model.onnx": b"an ONNX graph",
    "onnx/model.onnx_data": b"its weights, stored beside it",
    "original/consolidated.00.pth": b"the weights in the original format",
    "README.md": b"# the source's own card\n",
    "special_tokens_map.json": b"{}",
}


def test_a_local_copy_of_a_whole_hub_repo_gives_the_output_its_small_files_only(cli, tiny_copy, tmp_path):
    """docs/expand.md's list of what OUT gets from SRC, for a folder as `hf download --local-dir` leaves a whole repo:
    the small files byte for byte; no hidden file, no weight file of another format (a stale copy of the source's
    weights that `grow push` would upload, in a sub-folder too), and a file over 100 MB not copied but listed in the
    report and the printed summary; the card is the grown model's. `onnx/model.onnx_data` (ONNX's external weights)
    was copied."""
    src = tiny_copy("llama")
    for name, data in WHOLE_REPO_EXTRAS.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    with open(src / "big_notes.txt", "wb") as big:
        big.truncate(100 * 1024 * 1024 + 1)  # sparse: costs no disk
    result = cli("expand", src, tmp_path / "out", "--layers", "6", "--json")
    assert result.code == 0, result.stderr
    files, out = json.loads(result.stdout)["files"], tmp_path / "out"
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    small = {"generation_config.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert written == small | {"config.json", "model.safetensors", "grow.json", "README.md"}
    assert set(files["copied"]) == small and files["skipped"] == ["big_notes.txt"]
    assert all((out / name).read_bytes() == (src / name).read_bytes() for name in small)
    assert "# the source's own card" not in (out / "README.md").read_text()
    printed = cli("expand", src, tmp_path / "again", "--layers", "6")
    assert printed.code == 0 and "not copied (over 100 MB): big_notes.txt" in printed.stdout
    assert " in 1 shard in " in printed.stdout and "; copied 3 files" in printed.stdout  # not "1 shard(s)"


def _tensor_bytes(folder) -> dict[str, bytes]:
    """Every tensor's stored bytes, read straight from the shards by their headers."""
    from grow_cli.checkpoint.reader import CheckpointReader

    with CheckpointReader(folder) as reader:
        entries = dict(reader.tensors)
    found = {}
    for name, entry in entries.items():
        with open(entry.file, "rb") as f:
            f.seek(entry.start)
            found[name] = f.read(entry.end - entry.start)
    return found


def test_depth_copies_are_the_source_bytes_in_the_kernel_and_through_the_buffer(
    cli, tiny_checkpoints, tmp_path, monkeypatch
):
    """Stacked layers are the source's bytes; the kernel path (counted) and the buffered fallback (forced) write
    identical files."""
    import errno
    import os

    src = tiny_checkpoints("llama")
    calls = []
    real = os.copy_file_range
    monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a) or real(*a))
    assert cli("expand", src, tmp_path / "kernel", "--layers", "8", "--shard-size", "30KB", "-q").code == 0
    assert calls

    def refuse(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    assert cli("expand", src, tmp_path / "buffered", "--layers", "8", "--shard-size", "30KB", "-q").code == 0
    shards = sorted(p.name for p in (tmp_path / "kernel").glob("*.safetensors"))
    assert len(shards) > 1 and shards == sorted(p.name for p in (tmp_path / "buffered").glob("*.safetensors"))
    for name in shards:
        assert (tmp_path / "kernel" / name).read_bytes() == (tmp_path / "buffered" / name).read_bytes()
    source, grown = _tensor_bytes(src), _tensor_bytes(tmp_path / "kernel")
    for name, data in grown.items():
        if ".layers." in name:
            layer = int(name.split(".layers.")[1].split(".")[0])
            name = name.replace(f".layers.{layer}.", f".layers.{layer % 4}.")
        assert data == source[name]


def test_identity_zeros_are_written_without_building_them(cli, tiny_checkpoints, tmp_path):
    src = tiny_checkpoints("llama")
    assert cli("expand", src, tmp_path / "out", "--layers", "6", "--depth-method", "identity", "-q").code == 0
    grown, source = _tensor_bytes(tmp_path / "out"), _tensor_bytes(src)
    zeroed = [f"model.layers.{j}.{p}.weight" for j in (2, 5) for p in ("self_attn.o_proj", "mlp.down_proj")]
    for name in zeroed:
        assert grown[name] == bytes(len(source[name.replace("layers.5", "layers.3").replace("layers.2", "layers.1")]))
    assert grown["model.layers.2.self_attn.q_proj.weight"] == source["model.layers.1.self_attn.q_proj.weight"]


@pytest.mark.parametrize(
    "growth",
    [
        {"width_factor": 2, "width_method": "fpi"},
        {"width_factor": 2, "width_method": "aki"},
        {"width_factor": 2, "width_method": "fpi", "dtype": "bf16"},
        {"dtype": "bf16"},
    ],
)
def test_writes_overlapped_with_compute_equal_one_at_a_time(tiny_checkpoints, tmp_path, growth):
    """The executor writes a widened or cast tensor while it computes the next (two buffer sets alternate); the
    result must be what computing and writing one tensor at a time gives — a reused buffer would show here."""
    from grow_cli.checkpoint.model_config import load_config
    from grow_cli.checkpoint.reader import CheckpointReader
    from grow_cli.growth.expand import expand, materialize
    from grow_cli.growth.plan import build_plan
    from grow_cli.growth.spec import GrowthSpec

    src = tiny_checkpoints("llama")
    spec = GrowthSpec(layers=6, depth_method="interleave", **growth)
    expand(str(src), tmp_path / "out", spec, quiet=True)
    grown = _tensor_bytes(tmp_path / "out")
    with CheckpointReader(src) as reader:
        plan = build_plan(load_config(src), reader.tensor_infos(), spec)
        for i, t in enumerate(plan.tensors):
            expected = materialize(plan, reader, i).values.tobytes()
            assert grown[t.name] == expected, t.name


def test_casts_reuse_two_buffers(tiny_checkpoints, tmp_path, monkeypatch):
    """`--dtype` casts every tensor the executor computes; each cast lands in one of two reused buffers (a fresh
    tensor per cast left the allocator holding 1.6× the planned peak), and the plan counts the second one."""
    from grow_cli.growth import expand as executor
    from grow_cli.growth.spec import GrowthSpec

    seen = []
    real = executor.materialize

    def spy(plan, reader, index, pool=None, casts=None, *block):
        result = real(plan, reader, index, pool, casts, *block)
        if plan.casts(plan.tensors[index]):
            seen.append(casts is not None and casts.owns(result.values))
        return result

    monkeypatch.setattr(executor, "materialize", spy)
    report = executor.expand(str(tiny_checkpoints("llama")), None, GrowthSpec(layers=6, dtype="bf16"), dry_run=True)
    executor.expand(str(tiny_checkpoints("llama")), tmp_path / "out", GrowthSpec(layers=6, dtype="bf16"), quiet=True)
    assert seen and all(seen)
    largest = max(math.prod(t["shape"]) * 2 for t in report["tensors"])  # every tensor is cast to bf16
    assert report["estimated_peak_memory_bytes"] >= 2 * largest


def test_a_failed_background_write_stops_the_run(cli, tiny_checkpoints, tmp_path, monkeypatch):
    from grow_cli.checkpoint.writer import ShardWriter

    original = ShardWriter.write

    def failing_write(self, name, data, rows=None):
        if self._next == 5:
            raise OSError(28, "No space left on device")
        return original(self, name, data, rows)

    monkeypatch.setattr(ShardWriter, "write", failing_write)
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--width-factor", "2", "-q")
    assert result.code != 0 and "No space left" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.grow-*"))
