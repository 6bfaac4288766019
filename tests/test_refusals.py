"""Bad input: one clear line on stderr, a non-zero exit code, no traceback, and nothing written."""

from __future__ import annotations

import json
import struct

import pytest


def _assert_refused(result, out_dir, *fragments):
    assert result.code != 0, result
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # one line, no traceback
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not out_dir.exists() or not any(out_dir.iterdir())
    assert not list(out_dir.parent.glob(f".{out_dir.name}.grow-tmp-*"))


def test_missing_folder(cli, tmp_path):
    _assert_refused(
        cli("expand", tmp_path / "nope", tmp_path / "out", "--layers", "8"),
        tmp_path / "out",
        "does not exist",
    )


@pytest.mark.parametrize("source", [" ", "nope"])
def test_a_missing_model_is_named_quoted(cli, tmp_path, source):
    """A name of spaces was invisible: `grow inspect ' '` said "error:   does not exist"."""
    result = cli("inspect", source)
    assert result.code != 0 and result.stderr.splitlines() == [
        f"error: {source!r} does not exist (give a model folder or a Hub id such as org/name)"
    ], result.stderr


def test_no_weights(cli, tiny_copy, tmp_path):
    src = tiny_copy("llama")
    for f in src.glob("*.safetensors*"):
        f.unlink()
    _assert_refused(cli("expand", src, tmp_path / "out", "--layers", "8"), tmp_path / "out", "no weights")


def test_refused_weight_formats_are_named(cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (src / "model.gguf").write_bytes(b"GGUF")
    _assert_refused(cli("inspect", src), tmp_path / "out", "model.gguf")


def test_truncated_safetensors(cli, tiny_copy, tmp_path):
    src = tiny_copy("llama")
    shard = sorted(src.glob("model-*.safetensors"))[2]
    shard.write_bytes(shard.read_bytes()[:-100])
    _assert_refused(cli("expand", src, tmp_path / "out", "--layers", "8"), tmp_path / "out", "truncated", shard.name)


def test_corrupted_header(cli, tiny_copy, tmp_path):
    src = tiny_copy("llama")
    shard = sorted(src.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    shard.write_bytes(data[:8] + b"{not json" + data[17:])
    _assert_refused(cli("expand", src, tmp_path / "out", "--layers", "8"), tmp_path / "out", "corrupted")


def test_index_names_missing_shard(cli, tiny_copy, tmp_path):
    src = tiny_copy("llama")
    sorted(src.glob("model-*.safetensors"))[1].unlink()
    _assert_refused(cli("expand", src, tmp_path / "out", "--layers", "8"), tmp_path / "out", "missing")


def test_index_names_a_shard_that_is_a_directory(cli, tiny_copy, tmp_path):
    """A folder where the index names a shard is named as a folder, not reported as missing."""
    src = tiny_copy("llama")
    shard = sorted(src.glob("model-*.safetensors"))[1]
    shard.unlink()
    shard.mkdir()
    result = cli("expand", src, tmp_path / "out", "--layers", "8")
    _assert_refused(result, tmp_path / "out", f"names shard {shard.name}, which is a directory, not a file")
    assert "missing" not in result.stderr


def test_a_checkpoint_whose_save_did_not_finish_is_named_as_one(cli, tmp_path):
    """A train-stage checkpoint folder without grow-state.json (written last by a save: a killed run's) was refused
    as "no config.json; is it a Hugging Face model folder?"; it is now named as the unfinished save it is."""
    step = tmp_path / "run" / "checkpoints" / "step_00000004"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"")
    result = cli("expand", step, tmp_path / "out", "--layers", "8")
    _assert_refused(result, tmp_path / "out", "train-stage checkpoint without its grow-state.json")


def test_index_path_outside_folder(cli, tiny_copy, tmp_path):
    src = tiny_copy("llama")
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    (tmp_path / "evil.safetensors").write_bytes((src / index["weight_map"][first]).read_bytes())
    index["weight_map"][first] = "../evil.safetensors"
    index_path.write_text(json.dumps(index))
    _assert_refused(cli("expand", src, tmp_path / "out", "--layers", "8"), tmp_path / "out", "outside")


def test_shapes_contradicting_config(cli, tiny_copy, tmp_path):
    src = tiny_copy("llama")
    config = json.loads((src / "config.json").read_text())
    config["intermediate_size"] = 64
    (src / "config.json").write_text(json.dumps(config))
    _assert_refused(cli("expand", src, tmp_path / "out", "--layers", "8"), tmp_path / "out", "shape", "config.json")


def test_unknown_architecture(cli, tiny_copy, tmp_path):
    src = tiny_copy("llama")
    config = json.loads((src / "config.json").read_text())
    config["model_type"] = "no_such_model"  # neither curated nor in transformers (derivable ones: test_arch_derived)
    (src / "config.json").write_text(json.dumps(config))
    _assert_refused(
        cli("expand", src, tmp_path / "out", "--layers", "8"),
        tmp_path / "out",
        "unknown architecture",
        "no_such_model",
    )


@pytest.mark.parametrize("model_type", [["llama"], {"a": 1}, 7])
def test_a_model_type_that_is_not_a_name(cli, tiny_copy, tmp_path, model_type):
    """A model_type that is a list, an object or a number reached the catch-all (unhashable type) in expand and
    inspect."""
    src = tiny_copy("llama")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    _assert_refused(cli("expand", src, tmp_path / "out", "--layers", "8"), tmp_path / "out", "model_type", "not a name")
    result = cli("inspect", src)
    assert result.code == 1 and "not a name" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_unknown_tensor_is_not_dropped(cli, tiny_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    src = tiny_copy("llama")
    shard = sorted(src.glob("model-*.safetensors"))[0]
    tensors = load_file(shard)
    tensors["model.extra_adapter.weight"] = next(iter(tensors.values())).clone()
    save_file(tensors, shard, metadata={"format": "pt"})
    index_path = src / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.extra_adapter.weight"] = shard.name
    index_path.write_text(json.dumps(index))
    _assert_refused(
        cli("expand", src, tmp_path / "out", "--layers", "8"),
        tmp_path / "out",
        "model.extra_adapter.weight",
        "unknown tensor",
    )


def test_fewer_layers_than_source(cli, tiny_checkpoints, tmp_path):
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "2")
    _assert_refused(result, tmp_path / "out", "smaller than the source")
    assert result.code == 2


def test_identity_refused_for_post_ln(cli, tiny_checkpoints, tmp_path):
    result = cli("expand", tiny_checkpoints("bert"), tmp_path / "out", "--layers", "6", "--depth-method", "identity")
    _assert_refused(result, tmp_path / "out", "post-LayerNorm")


def test_non_empty_output_needs_force(cli, tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = cli("expand", tiny_checkpoints("llama"), out, "--layers", "8")
    assert result.code != 0 and "--force" in result.stderr
    assert (out / "precious.txt").read_text() == "keep me"
    ok = cli("expand", tiny_checkpoints("llama"), out, "--layers", "8", "--force", "-q")
    assert ok.code == 0, ok.stderr
    assert not (out / "precious.txt").exists() and (out / "config.json").exists()


def test_output_inside_source_is_refused(cli, tiny_copy):
    src = tiny_copy("llama")
    result = cli("expand", src, src / "grown", "--layers", "8")
    assert result.code != 0 and "inside the source" in result.stderr
    assert not (src / "grown").exists()


def test_failure_midway_keeps_the_previous_output(cli, tiny_checkpoints, tmp_path, monkeypatch):
    """A run that dies while streaming (here: the disk fills up after 5 tensors) leaves OUT as it was."""
    from grow_cli.checkpoint.writer import ShardWriter

    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("earlier model")
    original = ShardWriter.write

    def failing_write(self, name, tensor, rows=None):
        if self._next == 5:
            raise OSError(28, "No space left on device")
        return original(self, name, tensor, rows)

    monkeypatch.setattr(ShardWriter, "write", failing_write)
    result = cli("expand", tiny_checkpoints("llama"), out, "--layers", "8", "--force", "-q")
    assert result.code != 0 and "No space left" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert not list(tmp_path.glob(".out.grow-*"))


def test_unsupported_dtype(cli, tiny_checkpoints, tmp_path):
    _assert_refused(
        cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "8", "--dtype", "fp64"),
        tmp_path / "out",
        "--dtype",
    )


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--layers", "8", "--depth-factor", "2"], "not both"),
        (["--depth-method", "dus", "--layers", "7"], "even"),
        (["--depth-method", "dus", "--dus-overlap", "3"], "between 0 and 1 for 4 layers"),
        (["--depth-method", "dus", "--dus-overlap", "2"], "would add no layers"),  # 2·(4 − 2) = 4: was accepted
        (["--depth-method", "dus", "--layers", "4"], "between 6 and 8"),  # the source's own count: was accepted
        (["--depth-factor", "0.5"], "--depth-factor 0.5 (2) is smaller than the source's 4 layers"),
        (["--depth-method", "warp", "--layers", "8"], "unknown depth method"),
        (["--layers", "8", "--shard-size", "lots"], "size"),
        (["--dus-overlap", "1", "--layers", "8"], "only to --depth-method dus"),
    ],
)
def test_option_refusals(cli, tiny_checkpoints, tmp_path, args, fragment):
    _assert_refused(cli("expand", tiny_checkpoints("llama"), tmp_path / "out", *args), tmp_path / "out", fragment)


def test_a_dry_run_refuses_a_push_to_hub_that_is_no_repo_id_as_the_run_does(cli, tiny_checkpoints, tmp_path):
    args = ["expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "8", "--push-to-hub", "bad name!!"]
    dry, real = cli(*args, "--dry-run"), cli(*args)
    _assert_refused(dry, tmp_path / "out", "'bad name!!' is not a repo id")
    assert (dry.code, dry.stderr, dry.stdout) == (real.code, real.stderr, real.stdout) == (2, real.stderr, "")


def test_a_named_pipe_where_grow_reads_a_file_is_refused_not_waited_on(tmp_path):
    """`grow family PIPE` waited forever for a writer to the pipe (Ctrl-C ended it); a model folder whose config.json
    is a pipe was said to have no config.json. Run as processes with a timeout, so that a wait fails the test."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    os.mkfifo(tmp_path / "recipe.yaml")
    (tmp_path / "model").mkdir()
    os.mkfifo(tmp_path / "model" / "config.json")
    pipe_line = "is not a regular file (a pipe, a socket or a device)"
    cases = [
        (["family", "recipe.yaml"], 2, f"error: recipe recipe.yaml {pipe_line}; give a YAML recipe"),
        (["family", "recipe.yaml", "--check"], 2, f"error: recipe recipe.yaml {pipe_line}; give a YAML recipe"),
        (["inspect", "model"], 1, f"error: {tmp_path / 'model' / 'config.json'} {pipe_line}; a model folder's"),
        (["plan", "--target", "model/config.json", "--tokens", "1B"], 1, f"error: model/config.json {pipe_line}"),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for args, code, line in cases:
        done = subprocess.run(
            [sys.executable, "-m", "grow_cli", *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
        )
        assert done.returncode == code and done.stderr.startswith(line), (args, done.stderr)
        assert len(done.stderr.splitlines()) == 1 and done.stdout == "", done.stderr


@pytest.mark.parametrize(
    "args, line",
    [
        (["--depth-factor", "2e99"], "error: 8e+99 target layers (from 4) is beyond grow's bound of 1,024"),
        (["--width-factor", "2e99"], "error: --hidden-size 6.4e+100 is beyond grow's bound of 262,144"),
        (["--experts", str(10**20)], "error: --experts 1e+20 is beyond grow's bound of 4,096"),
        (["--layers", "2000"], "error: 2,000 target layers (from 4)"),  # below 10**15: in full, as before
    ],
)
def test_a_huge_number_is_shown_short_in_a_refusal(cli, tiny_checkpoints, tmp_path, args, line):
    """`--depth-factor 2e99` was answered with the 79 digits of the layer count it made."""
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", *args, "--dry-run")
    _assert_refused(result, tmp_path / "out", line)
    assert result.stderr.startswith(line)


def test_a_huge_token_budget_is_shown_short_in_its_refusal():
    """`--max-tokens 2e99` was answered with 100 digits (the float's exact integer value)."""
    from grow_cli.errors import OptionError
    from grow_cli.train.config import TrainConfig, parse_max_tokens

    with pytest.raises(OptionError, match=r"^--max-tokens must be a finite number ≥ 1 and ≤ 1e\+18, got 2e\+99$"):
        TrainConfig(model="m", data=["d"], out="o", max_tokens=parse_max_tokens("2e99"))
