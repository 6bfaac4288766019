"""`grow inspect`, `--dry-run`, `--json`, and the CLI's documentation."""

from __future__ import annotations

import json

import pytest

from grow_cli.cli import app


def test_inspect_json(cli, tiny_checkpoints):
    result = cli("inspect", tiny_checkpoints("llama_tied"), "--json")
    assert result.code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["architecture"] == "llama"
    assert (info["layers"], info["hidden_size"], info["intermediate_size"]) == (4, 32, 48)
    assert (info["num_heads"], info["num_kv_heads"], info["head_dim"]) == (4, 2, 8)
    assert info["tie_word_embeddings"] is True and info["vocab_size"] == 96
    assert info["dtypes"] == {"F32": info["tensors"]}
    assert len(info["files"]) > 1 and all(f["bytes"] > 0 for f in info["files"])
    depth = {m["method"]: m["applies"] for m in info["methods"]["depth"]}
    assert depth["identity"] is True
    # 4 layers × (2 norms + 7 linears) + embedding + final norm; the tied head is not counted twice
    assert info["num_parameters"] == 96 * 32 + 32 + 4 * (2 * 32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 3 * 48 * 32)


def test_inspect_bert_reports_identity_not_applicable(cli, tiny_checkpoints):
    info = json.loads(cli("inspect", tiny_checkpoints("bert"), "--json").stdout)
    depth = {m["method"]: m for m in info["methods"]["depth"]}
    assert depth["identity"]["applies"] is False and "post-LayerNorm" in depth["identity"]["why"]


def test_inspect_human_report(cli, tiny_checkpoints):
    result = cli("inspect", tiny_checkpoints("gpt2"))
    assert result.code == 0 and "gpt2" in result.stdout and "tied embeddings" in result.stdout


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
    plan = json.loads(result.stdout)["plan"]
    assert not (tmp_path / "out").exists()
    assert plan["target"]["layers"] == 6 and plan["target_config"]["num_hidden_layers"] == 6
    assert plan["depth"]["layer_map"] == [0, 1, 1, 2, 3, 3]
    zeros = [t["name"] for t in plan["tensors"] if t["from"].startswith("zeros")]
    assert sorted(zeros) == sorted(
        f"model.layers.{j}.{p}.weight" for j in (2, 5) for p in ("self_attn.o_proj", "mlp.down_proj")
    )
    assert plan["estimated_peak_memory_bytes"] > 0 and plan["output_bytes"] > 0
    human = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "6", "--dry-run")
    assert "plan" in human.stdout and not (tmp_path / "out").exists()


def test_expand_json_report_and_outputs(cli, tiny_checkpoints, tmp_path):
    result = cli("expand", tiny_checkpoints("llama"), tmp_path / "out", "--layers", "8", "--json")
    assert result.code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["target_shape"]["layers"] == 8
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


def test_lineage_is_inherited(cli, tiny_checkpoints, tmp_path):
    assert cli("expand", tiny_checkpoints("llama"), tmp_path / "a", "--layers", "6", "-q").code == 0
    assert cli("expand", tmp_path / "a", tmp_path / "b", "--layers", "12", "-q").code == 0
    record = json.loads((tmp_path / "b" / "grow.json").read_text())
    assert [s["target"]["layers"] for s in record["stages"]] == [6, 12]


def _commands():
    return [c.name for c in app.registered_commands]


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented_with_examples(cli, command):
    result = cli(command, "--help")
    assert result.code == 0
    assert "Examples" in result.stdout, f"`grow {command} --help` has no examples"


def test_version(cli):
    result = cli("--version")
    assert result.code == 0 and result.stdout.startswith("grow ")


def test_verify_in_bounded_memory_streams_weights_from_disk(cli, tiny_checkpoints, tmp_path):
    """With --verify-max-memory far below the model's size, accelerate offloads weights to disk; the check gives
    the same figures as an unbounded one."""
    src = tiny_checkpoints("llama")
    args = ["--layers", "6", "--depth-method", "identity", "--verify", "--json", "-q"]
    bounded = cli("expand", src, tmp_path / "a", *args, "--verify-max-memory", "60KB")
    unbounded = cli("expand", src, tmp_path / "b", *args)
    assert bounded.code == 0 and unbounded.code == 0, bounded.stderr + unbounded.stderr
    a, b = json.loads(bounded.stdout)["verify"], json.loads(unbounded.stdout)["verify"]
    assert a["passed"] is True and a["max_abs_logit_diff"] == b["max_abs_logit_diff"] == 0.0
    assert a["output_scale"] == b["output_scale"]


def test_verify_in_bounded_memory_offloads(tiny_checkpoints, monkeypatch):
    """The bound really moves weights off the CPU: the loaded model's device map puts layers on disk."""
    import torch
    import transformers

    from grow_cli.growth import verify

    seen = {}
    original = transformers.LlamaForCausalLM.from_pretrained

    def spy(folder, **options):
        model = original(folder, **options)
        seen.update(getattr(model, "hf_device_map", {}) or {})
        return model

    monkeypatch.setattr(transformers.LlamaForCausalLM, "from_pretrained", spy)
    verify._outputs(tiny_checkpoints("llama"), torch.randint(0, 96, (1, 8)), 60_000)
    assert "disk" in seen.values()
